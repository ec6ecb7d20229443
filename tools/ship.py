"""Ships a trained workdir's model into pretrained/<model>/ (SPEC §6), if it is better.

  python tools/ship.py --workdir=runs/gmn --model=gmn --wall_time="94 min" \
      --command="python -m oneshot_tf.main --model=gmn ..." [--force]

Copies the newest export (<workdir>/export/<model>/<v>/) as pretrained/<model>/1/,
with eval.json, per_shot.png, the newest sample grid (required), config.json and PROVENANCE.md
(steps, wall time, machine, command, commit, numbers); then README's table of the
shipped models wants `python tools/results_table.py --write`. A model already shipped is
replaced only when the new one's mean of t = 1..5 (eval.json) is higher, unless
--force. Refuses a model folder over 40 MB. Prints what it did.
"""

import json
import pathlib
import shutil

import tensorflow as tf
from absl import flags

from oneshot_tf import cli, errors, precision, pretrained
from oneshot_tf import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained, evaluated and exported workdir.", required=True)
_MODEL = flags.DEFINE_string("model", None, "Model name (the export folder's).", required=True)
_COMMAND = flags.DEFINE_string("command", "", "The training command, for the provenance.")
_WALL_TIME = flags.DEFINE_string("wall_time", "", "Training wall time, for the provenance.")
_NOTES = flags.DEFINE_string("notes", "", "Anything else the provenance should say.")
_FORCE = flags.DEFINE_bool("force", False, "Replace a shipped model even if it is not better.")
_ROOT = flags.DEFINE_string("root", str(pretrained.ROOT), "Folder of the shipped models (pretrained/).")
_LIMIT = 40 << 20


def main(argv):
    del argv
    workdir, name = pathlib.Path(_WORKDIR.value), _MODEL.value
    if not (workdir / "eval.json").exists():
        raise errors.UserError(f"no {workdir / 'eval.json'}: run --mode=eval first")
    result = json.loads((workdir / "eval.json").read_text())
    export = workdir_lib.newest_export(workdir, name)
    grids = sorted((workdir / "samples").glob("samples_step*.png"), key=lambda p: p.stat().st_mtime)
    if not grids:
        raise errors.UserError(f"no sample grid in {workdir / 'samples'}: run --mode=sample first")
    root = pathlib.Path(_ROOT.value)
    target = root / name
    if (target / "eval.json").exists() and not _FORCE.value:
        shipped = json.loads((target / "eval.json").read_text())["mean_t1_to_5"]["log_prob"]
        if result["mean_t1_to_5"]["log_prob"] <= shipped:
            raise SystemExit(
                f"not shipped: mean of t=1..5 {result['mean_t1_to_5']['log_prob']:.2f} is not above the shipped {shipped:.2f}"
            )
    staging = root / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(export, staging / "1")
    shutil.copy(workdir / "eval.json", staging / "eval.json")
    shutil.copy(workdir / "config.json", staging / "config.json")
    if (workdir / "per_shot.png").exists():
        shutil.copy(workdir / "per_shot.png", staging / "per_shot.png")
    shutil.copy(grids[-1], staging / "samples.png")
    stored = tf.train.load_checkpoint(str(staging / "1" / "variables" / "variables")).get_variable_to_dtype_map()
    stored_dtypes = ", ".join(sorted({d.name for d in stored.values() if d.is_floating}))
    commit = result.get("code_commit", "unknown (the evaluation predates recording it)")
    rows = " | ".join(f"{r['log_prob']:.2f}" for r in result["per_shot"])
    joint = result.get("joint_set")
    joint_line = (
        f"- Joint log p of sets of {joint['set_size']} (the episodes' first drawings), importance-sampled over all "
        f"the set's latents, K = {joint.get('num_samples', result['num_samples'])}: {joint['log_prob_per_item']:.2f} +- {joint['stderr']:.2f} "
        "nats per drawing\n"
        if joint
        else ""
    )
    step, steps = result["checkpoint_step"], result.get("trained_steps", result["checkpoint_step"])
    checkpoint_line = f"- Checkpoint: step {step} ({result['checkpoint']} checkpoint of the run)" + (
        f"; the run started from a model trained for {steps - step} steps: {steps} steps in all\n"
        if steps != step
        else "\n"
    )
    (staging / "PROVENANCE.md").write_text(
        f"# pretrained/{name}\n\n" + checkpoint_line + f"- Training command: `{_COMMAND.value}`\n"
        f"- Wall time: {_WALL_TIME.value}\n"
        f"- Machine: {precision.describe_cpu()}, no GPU\n"
        f"- Code: commit {commit} of oneshot_tf (the evaluation's)\n"
        f"- Precision of the evaluation: {result['precision']}; weights stored as {stored_dtypes}\n"
        f"- Per-shot log p(x_t | x_<t), t = 1..10, {result['episodes']} test episodes, K = {result['num_samples']}: "
        f"{rows} nats; mean of t = 1..5: {result['mean_t1_to_5']['log_prob']:.2f}\n"
        + joint_line
        + (f"- {_NOTES.value}\n" if _NOTES.value else "")
        + "\nUse: `python -m oneshot_tf.main --model="
        + name
        + " --pretrained --mode=sample`, "
        "`python -m oneshot_tf.serve`, or this folder as TF Serving's model base path.\n"
    )
    size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
    if size > _LIMIT:
        shutil.rmtree(staging)
        raise errors.UserError(
            f"{size / 2**20:.1f} MB is over the 40 MB limit for a shipped model; export with "
            "--config.export.weights_dtype=float16 to store the weights in half the space"
        )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"shipped {export} as {target}/1 ({size / 2**20:.1f} MB); "
          f"then: python tools/results_table.py --root={_ROOT.value} --write")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
