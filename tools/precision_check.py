"""Does mixed_bfloat16 lose anything that matters? Same seed, same steps, both policies.

  python tools/precision_check.py --config=configs/statistician.py --steps=1000 \
      --workdir=/tmp/precision_check [--config.eval.episodes=1000 --config.eval.num_samples=100]

Trains the config from the same seed for --steps under float32 and under
mixed_bfloat16 (the trainer and data stream are identical; only the dtype policy
differs), scores both with the per-shot protocol on the same episodes, samples and
seeds (each in its own policy, as a user would run it), and prints, per t, both
log-likelihoods and their difference. The criterion (issue 7): |difference| <=
--tolerance nats at every t. JSON with the tables goes to <workdir>/precision_check.json.
Training resumes in <workdir>/<policy>/ if it was interrupted.
"""

import json
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from oneshot_tf import evaluate, precision, train
from oneshot_tf.data import omniglot

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file[:variant].")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps for each policy.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/precision_check", "Holds one workdir per policy.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.5, "Largest acceptable |difference| in nats at any t.")


def _data_dir():
    return _DATA_DIR.value or omniglot.default_data_dir()


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/statistician.py")
    tables = {}
    for policy in ("float32", "mixed_bfloat16"):
        run = config.copy_and_resolve_references()
        with run.unlocked():
            run.precision = policy
            run.train.steps = _STEPS.value
            run.train.eval_every = _STEPS.value
            run.eval.classification_queries = 0
        workdir = pathlib.Path(_WORKDIR.value) / policy
        logging.info("training %s under %s for %d steps in %s", run.model, policy, _STEPS.value, workdir)
        with precision.policy_scope(policy):
            train.train_and_evaluate(run, workdir, _data_dir())
            tables[policy] = evaluate.evaluate(run, workdir, _data_dir())
    rows = []
    for f32, bf16 in zip(tables["float32"]["per_shot"], tables["mixed_bfloat16"]["per_shot"]):
        rows.append(
            {
                "t": f32["t"],
                "float32": f32["log_prob"],
                "mixed_bfloat16": bf16["log_prob"],
                "difference": round(bf16["log_prob"] - f32["log_prob"], 3),
                "stderr_float32": f32["stderr"],
            }
        )
    worst = max(abs(row["difference"]) for row in rows)
    report = {
        "model": config.model,
        "steps": _STEPS.value,
        "episodes": tables["float32"]["episodes"],
        "num_samples": tables["float32"]["num_samples"],
        "rows": rows,
        "max_abs_difference": worst,
        "tolerance": _TOLERANCE.value,
        "within_tolerance": worst <= _TOLERANCE.value,
    }
    out = pathlib.Path(_WORKDIR.value) / "precision_check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'t':>3} {'float32':>9} {'bf16':>9} {'diff':>7}")
    for row in rows:
        print(f"{row['t']:3d} {row['float32']:9.2f} {row['mixed_bfloat16']:9.2f} {row['difference']:7.2f}")
    print(
        f"max |difference| {worst:.2f} nats; tolerance {_TOLERANCE.value}; {'PASS' if worst <= _TOLERANCE.value else 'FAIL'}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
