"""Training and serving speed of a model config, per precision and XLA setting.

  python tools/benchmark.py --config=configs/statistician.py \
      [--precisions=float32,mixed_bfloat16] [--xla=false,true] [--steps=30] \
      [--eval_episodes=0] [--out=benchmark.json]
  python tools/benchmark.py --config=configs/statistician.py --peer=~/nspeer/bin/python --rounds=3

With --peer (a Python that has torch), the reference implementation
(../shared/bench/peer_ns_bench.py) is timed beside ours, A B A B: per precision,
--rounds rounds of our --steps steps then the reference's (float32 against float32,
mixed_bfloat16 against its bfloat16 autocast), and the median sets/s of each and
their ratio are printed with the CPU's name and flags.

For each (precision, XLA) pair, runs the trainer's own inner loop
(`train.Trainer.train`) on real episodes and reports steps/s, sets/s,
images/s, the step's FLOPs (counted by TF's profiler on the traced step) and the
achieved GFLOP/s. Then, once per precision: the machine's ceiling in the same run
(a 2048^3 matmul and 3x3 convs at the statistician's encoder shapes, in that
precision's compute dtype) and each step's achieved fraction of it; the `sample`
serving signature's median latency at batch 1, 5 shots; and optionally the time of
the per-shot table for `--eval_episodes` episodes at the config's K beside its
FLOP-bound time at the ceiling. Peak RSS of the process is reported at the end.
JSON goes to --out; a table goes to stdout.
"""

import json
import os
import pathlib
import resource
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags
from tensorflow.python.profiler import model_analyzer, option_builder

from oneshot_tf import cli, evaluate, export, train
from oneshot_tf import precision as precision_lib
from oneshot_tf.data import episodes, omniglot

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file[:variant].")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_PRECISIONS = flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
_XLA = flags.DEFINE_list("xla", ["false"], "jit_compile settings to time (false, true).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed training steps per setting (after a warm-up call).")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 0, "Episodes for the per-shot table timing; 0 skips.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")
_PEER = flags.DEFINE_string("peer", None, "Python with torch: time the PyTorch reference beside ours, A B A B.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "A B rounds with --peer.")
_PEER_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench" / "peer_ns_bench.py"


def _data_dir():
    return _DATA_DIR.value or omniglot.default_data_dir()


def _count_flops(concrete_function):
    """FLOPs of the graph's ops, or None when it has none countable (the profiler
    does not look inside tf.while_loop bodies, e.g. the seqgen canvas loop)."""
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return model_analyzer.profile(concrete_function.graph, options=options).total_float_ops or None


def _median_seconds(fn, repeats: int = 7) -> float:
    fn()  # Warm up (and let oneDNN pick its kernels).
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _ceiling(precision: str, images: int) -> dict:
    """This machine's GFLOP/s on a large matmul and on 3x3 convs at the statistician's
    encoder shapes (`images` per batch; 28x28x64, 14x14x128, 7x7x256, 'same' padding),
    in float32 or (for mixed_bfloat16) bfloat16, medians of 7. The ceiling is the best
    forward rate; the same convs' input-gradient and filter-gradient kernels are timed
    alone beside it (a training step's convs are a third of each), and
    `conv3x3_training_gflop_per_sec` is the rate of the three in equal FLOPs
    (their harmonic mean, per shape): what a step made of these convs alone could reach."""
    dtype = tf.float32 if precision == "float32" else tf.bfloat16
    n = 2048
    a = tf.cast(tf.random.stateless_normal([n, n], [1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], [3, 4]), dtype)
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    result = {"matmul_gflop_per_sec": round(2 * n**3 / _median_seconds(lambda: matmul().numpy()) / 1e9, 1)}
    rates = {"forward": [], "input_grad": [], "filter_grad": []}
    for size, channels in ((28, 64), (14, 128), (7, 256)):
        x = tf.cast(tf.random.stateless_normal([images, size, size, channels], [5, 6]), dtype)
        w = tf.cast(tf.random.stateless_normal([3, 3, channels, channels], [7, 8]), dtype)
        dy = tf.cast(tf.random.stateless_normal([images, size, size, channels], [9, 10]), dtype)
        kernels = {
            "forward": lambda x=x, w=w: tf.nn.conv2d(x, w, strides=1, padding="SAME"),
            "input_grad": lambda x=x, w=w, dy=dy: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
            ),
            "filter_grad": lambda x=x, w=w, dy=dy: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
            ),
        }
        flops = 2 * images * size * size * channels * channels * 9
        for kind, kernel in kernels.items():
            op = tf.function(kernel)
            rates[kind].append(round(flops / _median_seconds(lambda op=op: op().numpy()) / 1e9, 1))
    result["conv3x3_gflop_per_sec"] = rates["forward"]
    result["conv3x3_input_grad_gflop_per_sec"] = rates["input_grad"]
    result["conv3x3_filter_grad_gflop_per_sec"] = rates["filter_grad"]
    result["conv3x3_training_gflop_per_sec"] = [
        round(3 / sum(1 / r for r in per_shape), 1) for per_shape in zip(*rates.values())
    ]
    result["ceiling_gflop_per_sec"] = max(result["matmul_gflop_per_sec"], *rates["forward"])
    return result


def _training_setup(config, splits, precision: str, xla: bool):
    """The trainer's own inner loop, traced and warmed up: (run(num_steps) -> mean loss,
    the model)."""
    precision_lib.set_policy(precision)
    keras.utils.set_random_seed(config.seed)
    with config.unlocked():
        config.train.jit_compile = xla
    trainer = train.Trainer(config)
    _, iterator = trainer.iterator(splits["train"], 0)
    trainer.train(iterator, 2)  # Trace and warm up.
    # Trainer.train returns (loss, grad norm, skipped steps); the runner gives the loss.
    return (lambda num_steps: trainer.train(iterator, num_steps)[0]), trainer.model


def _time_training(config, splits, precision: str, xla: bool) -> dict:
    run, model = _training_setup(config, splits, precision, xla)
    start = time.perf_counter()
    loss = run(_STEPS.value)
    seconds = time.perf_counter() - start
    # FLOPs of one step: the profiler needs static shapes, so trace it on the batch's.
    batch_shape = [config.data.batch_size, config.data.set_size, 28, 28, 1]

    def one_step(images):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_sum(model.elbo(images, tf.constant([0, 0]), training=True))
        return tape.gradient(loss, model.trainable_variables)

    flops = _count_flops(tf.function(one_step).get_concrete_function(tf.TensorSpec(batch_shape, tf.float32)))
    steps_per_sec = _STEPS.value / seconds
    return {
        "precision": precision,
        "xla": xla,
        "steps_per_sec": round(steps_per_sec, 3),
        "sets_per_sec": round(steps_per_sec * config.data.batch_size, 2),
        "images_per_sec": round(steps_per_sec * config.data.batch_size * config.data.set_size, 1),
        "gflop_per_step": flops and round(flops / 1e9, 2),
        "gflop_per_sec": flops and round(flops * steps_per_sec / 1e9, 1),
        "loss": round(loss, 3),
        "model": model,
    }


def _time_serving(model, splits, config, ceiling: dict) -> dict:
    servable = export.Servable(model)
    support = tf.constant(episodes.fixed_episodes(splits["test"], num_episodes=1, set_size=5)["images"])
    for _ in range(5):
        servable.sample(support, tf.constant([0, 0]))
    latencies = []
    for i in range(200):
        start = time.perf_counter()
        servable.sample(support, tf.constant([i, 0]))["images"].numpy()
        latencies.append(time.perf_counter() - start)
    result = {"sample_latency_ms_median_batch1_5shots": round(1000 * float(np.median(latencies)), 3)}
    if _EVAL_EPISODES.value:
        test = evaluate.protocol_episodes(config.eval, splits["test"], _EVAL_EPISODES.value)
        start = time.perf_counter()
        evaluate.configured_log_probs(model, config.eval, test, seed=0)
        seconds = time.perf_counter() - start
        # FLOPs of one chunk (eval.batch_size episodes x eval.chunk_size samples), scaled.
        chunk = tf.function(lambda x: model.per_shot_log_weights(x, config.eval.chunk_size, tf.constant([0, 0])))
        shape = [config.eval.batch_size, *test.shape[1:]]
        chunk_flops = _count_flops(chunk.get_concrete_function(tf.TensorSpec(shape, tf.float32)))
        result["per_shot_table"] = {
            "episodes": _EVAL_EPISODES.value,
            "num_samples": config.eval.num_samples,
            "seconds": round(seconds, 1),
            "seconds_for_1000_episodes": round(seconds * 1000 / _EVAL_EPISODES.value, 1),
        }
        if chunk_flops:
            chunks = (_EVAL_EPISODES.value / config.eval.batch_size) * (
                config.eval.num_samples / config.eval.chunk_size
            )
            bound = chunk_flops * chunks / (ceiling["ceiling_gflop_per_sec"] * 1e9)
            result["per_shot_table"].update(
                {
                    "tflop": round(chunk_flops * chunks / 1e12, 2),
                    "flop_bound_seconds": round(bound, 1),
                    "measured_over_bound": round(seconds / bound, 2),
                }
            )
    return result


def _peer_sets_per_sec(precision: str) -> float:
    """One run of the reference's throughput benchmark: its sets/s."""
    dtype = "float32" if precision == "float32" else "bfloat16"
    command = [os.path.expanduser(_PEER.value), str(_PEER_SCRIPT), "--warmup", "2", "--steps", str(_STEPS.value),
               "--threads", str(os.cpu_count()), "--dtype", dtype, "--no-flops"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise SystemExit(f"the reference failed: {done.stderr[-2000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return float(lines[-1]["sets_per_s"])


def _side_by_side(config, splits) -> list:
    """Per precision: A B A B rounds of ours and the reference; medians and the ratio."""
    rows = []
    for precision in _PRECISIONS.value:
        ours, theirs = [], []
        run, _ = _training_setup(config, splits, precision, xla=False)
        for _ in range(_ROUNDS.value):
            start = time.perf_counter()
            run(_STEPS.value)
            ours.append(_STEPS.value * config.data.batch_size / (time.perf_counter() - start))
            theirs.append(_peer_sets_per_sec(precision))
            logging.info("%s: ours %.2f sets/s, reference %.2f sets/s", precision, ours[-1], theirs[-1])
        rows.append(
            {
                "precision": precision,
                "ours_sets_per_sec": [round(x, 2) for x in ours],
                "reference_sets_per_sec": [round(x, 2) for x in theirs],
                "ours_median": round(float(np.median(ours)), 2),
                "reference_median": round(float(np.median(theirs)), 2),
                "ratio": round(float(np.median(ours) / np.median(theirs)), 3),
            }
        )
    return rows


def _or_na(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'n/a':>{width}}" if value is None else format(value, spec)


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/statistician.py")
    splits = omniglot.load_configured_splits(config.data, _data_dir(), config.seed)
    if _PEER.value:
        rows = _side_by_side(config, splits)
        report = {
            "model": config.model,
            "cpu": precision_lib.describe_cpu(),
            "steps_per_round": _STEPS.value,
            "side_by_side": rows,
        }
        if _OUT.value:
            pathlib.Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return
    rows, serving, ceilings = [], {}, {}
    for precision in _PRECISIONS.value:
        for xla in _XLA.value:
            logging.info("timing %s, %s, xla=%s", config.model, precision, xla)
            row = _time_training(config, splits, precision, xla.lower() == "true")
            model = row.pop("model")
            rows.append(row)
        ceiling = _ceiling(precision, config.data.batch_size * config.data.set_size)
        ceilings[precision] = ceiling
        for row in rows:
            if row["precision"] == precision and row["gflop_per_sec"]:
                row["fraction_of_ceiling"] = round(row["gflop_per_sec"] / ceiling["ceiling_gflop_per_sec"], 3)
        serving[precision] = _time_serving(model, splits, config, ceiling)
    keras.mixed_precision.set_global_policy("float32")
    report = {
        "model": config.model,
        "batch_size": config.data.batch_size,
        "set_size": config.data.set_size,
        "steps_timed": _STEPS.value,
        "cpu": precision_lib.describe_cpu(),
        "ceiling": ceilings,
        "training": rows,
        "serving": serving,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")
    print(report["cpu"])
    header = (
        f"{'precision':16} {'xla':5} {'steps/s':>8} {'sets/s':>8} {'images/s':>9} {'GFLOP/step':>10} {'GFLOP/s':>8}"
    )
    print(header + f" {'of ceiling':>10}")
    for row in rows:
        print(
            f"{row['precision']:16} {str(row['xla']):5} {row['steps_per_sec']:8.2f} {row['sets_per_sec']:8.1f} "
            f"{row['images_per_sec']:9.0f} {_or_na(row['gflop_per_step'], '10.2f')} {_or_na(row['gflop_per_sec'], '8.1f')}"
            f" {_or_na(row.get('fraction_of_ceiling'), '10.3f')}"
        )
    print(json.dumps({"ceiling": ceilings, "serving": serving, "peak_rss_mb": report["peak_rss_mb"]}, indent=2))


if __name__ == "__main__":
    cli.run(main)
