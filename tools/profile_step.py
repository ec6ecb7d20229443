"""Where a training step's (or the per-shot scoring's) time goes, by TF op type, per precision.

  python tools/profile_step.py --config=configs/statistician.py \
      [--precisions=float32,mixed_bfloat16] [--steps=5] [--top=15] [--by=type] [--out=profile.json]
  python tools/profile_step.py --config=configs/gmn.py --what=eval --eval_episodes=20 --by=name

Runs the trainer's own inner loop (`train.Trainer`) under TF's profiler for --steps
steps after a warm-up, reads the host trace (the .xplane.pb the profiler writes) and
sums the time of every TF op event by op type. Ops run on two or more threads at once,
so the sums are thread time (they can exceed the wall time); the table gives ms per
step and the share of all op time, the largest --top types first, for each precision
side by side. `--by=name` sums by op name instead ("<layer path>/<op>:<type>"): which
layer's convolution or gradient takes the time. `--what=eval` profiles the per-shot
table instead (`evaluate.per_shot_log_probs` on --eval_episodes test episodes at the
config's K, batch and chunk sizes, a randomly initialised model: the time does not
depend on the weights); "per step" then means per episode.
"""

import collections
import json
import pathlib
import tempfile
import time

import keras
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from oneshot_tf import cli, evaluate, models, train
from oneshot_tf import precision as precision_lib
from oneshot_tf.data import omniglot

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file[:variant].")
_PRECISIONS = flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies to profile.")
_STEPS = flags.DEFINE_integer("steps", 5, "Profiled steps (after a warm-up call of 2).")
_TOP = flags.DEFINE_integer("top", 15, "Op types to print per precision.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")
_BY = flags.DEFINE_enum("by", "type", ["type", "name"], "Sum op time by op type or by op name.")
_WHAT = flags.DEFINE_enum("what", "train", ["train", "eval"], "Profile the training step or the per-shot table.")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 20, "Test episodes scored with --what=eval.")


def op_time(logdir: pathlib.Path, by: str = "type") -> dict:
    """{op type (or "<op name>:<op type>" with by="name"): microseconds} summed over the
    TF op events of the host trace in `logdir`.

    TF op events, on the executor's `tf_Compute` threads, are named "<op name>:<op
    type>"; runtime spans ("ExecutorState::Process", ...) and function calls
    ("...:__inference_...", which contain op events) are left out.
    """
    totals = collections.Counter()
    for path in logdir.rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    op_type = name.rsplit(":", 1)[-1]
                    if ":" in name and "::" not in name and not op_type.lstrip().startswith("__inference"):
                        totals[op_type if by == "type" else name] += event.duration_ps / 1e6
    return dict(totals)


def _training_runner(config, splits):
    """(run(), steps per run): the trainer's own inner loop, traced and warmed up."""
    trainer = train.Trainer(config)
    _, iterator = trainer.iterator(splits["train"], 0)
    trainer.train(iterator, 2)  # Trace and warm up.
    return (lambda: trainer.train(iterator, _STEPS.value)), _STEPS.value


def _scoring_runner(config, splits):
    """(run(), episodes per run): the per-shot table's scoring, traced and warmed up."""
    model = models.build_model(config.model, **config.model_kwargs.to_dict())
    test = evaluate.protocol_episodes(config.eval, splits["test"], _EVAL_EPISODES.value)

    def run(images=test, num_samples=config.eval.num_samples):
        return evaluate.configured_log_probs(model, config.eval, images, num_samples=num_samples)

    run(test[: config.eval.batch_size], min(config.eval.chunk_size, config.eval.num_samples))  # Trace.
    return run, _EVAL_EPISODES.value


def _profile(config, splits, precision: str) -> dict:
    precision_lib.set_policy(precision)
    keras.utils.set_random_seed(config.seed)
    run, units = (_training_runner if _WHAT.value == "train" else _scoring_runner)(config, splits)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        tf.profiler.experimental.stop()
        totals = collections.Counter()
        for name, us in op_time(pathlib.Path(logdir), _BY.value).items():
            totals[_short(name)] += us
    all_ops = sum(totals.values())
    ranked = totals.most_common()
    return {
        "precision": precision,
        "wall_ms_per_step": round(1000 * seconds / units, 1),
        "op_ms_per_step": round(all_ops / 1000 / units, 1),
        "ops": {name: round(us / 1000 / units, 2) for name, us in ranked},
    }


def _short(name: str) -> str:
    """Drops the trainer loop's and tf.function's wrappers from an op name."""
    return name.replace("while/body/_1/while/", "").replace("StatefulPartitionedCall/", "")


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/statistician.py")
    splits = omniglot.load_configured_splits(config.data, _DATA_DIR.value or omniglot.default_data_dir(), config.seed)
    reports = [_profile(config, splits, precision) for precision in _PRECISIONS.value]
    keras.mixed_precision.set_global_policy("float32")
    if _WHAT.value == "train":
        what = f"training, batch {config.data.batch_size}, {_STEPS.value} steps"
    else:
        what = f"per-shot scoring, {_EVAL_EPISODES.value} episodes, K = {config.eval.num_samples}; per episode"
    print(precision_lib.describe_cpu(), f"; {config.model}, {what}")
    for report in reports:
        print(
            f"\n{report['precision']}: {report['wall_ms_per_step']} ms/step wall, "
            f"{report['op_ms_per_step']} ms/step of op time (all threads)"
        )
        top = list(report["ops"].items())[: _TOP.value]
        width = max([32] + [len(name) for name, _ in top])
        for name, ms in top:
            print(f"  {name:{width}} {ms:9.1f} ms/step  {ms / report['op_ms_per_step']:6.1%}")
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(
            json.dumps({"cpu": precision_lib.describe_cpu(), "reports": reports}) + "\n"
        )


if __name__ == "__main__":
    cli.run(main)
