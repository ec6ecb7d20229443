"""Training steps/s under each tf.distribute strategy on this machine, same global batch.

  python tools/benchmark_strategies.py --config=configs/statistician.py \
      [--strategies=default,mirrored,multi_worker] [--steps=20] [--rounds=2] [--precision=float32]

Each measurement is a fresh process (a strategy has to be set up before TF's first op):
`default` on one device; `mirrored` over 2 logical CPU devices (or the GPUs); and
`multi_worker` as 2 local worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy,
gRPC collectives), the chief's time reported. Each runs the trainer's own inner loop
(`train.Trainer`) on real episodes: a warm-up call of 2 steps (tracing), then --steps
timed steps. Strategies alternate for --rounds rounds (A B C A B C); medians and the
ratio to `default` are printed with the CPU's name and flags, and written to --out.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from oneshot_tf import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file[:variant].")
_STRATEGIES = flags.DEFINE_list("strategies", ["default", "mirrored", "multi_worker"], "Strategies to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds over the strategies.")
_PRECISION = flags.DEFINE_string("precision", "float32", "Keras dtype policy.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")
_CHILD = flags.DEFINE_string("child", None, "(internal) time this strategy in this process and print JSON.")

REPLICAS = 2


def _time_in_this_process(config, strategy_name: str) -> dict:
    import tensorflow as tf

    if strategy_name == "mirrored" and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    from oneshot_tf import distribute, precision, train
    from oneshot_tf.data import omniglot

    strategy = distribute.make_strategy(strategy_name, cluster_timeout_secs=300)
    precision.set_policy(_PRECISION.value)
    splits = omniglot.load_configured_splits(config.data, _DATA_DIR.value or omniglot.default_data_dir(), config.seed)
    trainer = train.Trainer(config, strategy)
    _, iterator = trainer.iterator(splits["train"], 0)
    trainer.train(iterator, 2)  # Trace and warm up.
    start = time.perf_counter()
    trainer.train(iterator, _STEPS.value)
    seconds = time.perf_counter() - start
    return {
        "strategy": strategy_name,
        "replicas": strategy.num_replicas_in_sync,
        "chief": distribute.is_chief(strategy),
        "steps_per_sec": _STEPS.value / seconds,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(strategy_name: str) -> float:
    """Runs one measurement in fresh processes; the (chief's) steps/s."""
    command = [sys.executable, __file__, f"--child={strategy_name}", *sys.argv[1:]]
    environments = [dict(os.environ)]
    if strategy_name == "multi_worker":
        addresses = [f"127.0.0.1:{_free_port()}" for _ in range(REPLICAS)]
        environments = [
            dict(
                os.environ,
                TF_CONFIG=json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}),
            )
            for i in range(REPLICAS)
        ]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for env in environments]
    results = []
    for process in processes:
        stdout, _ = process.communicate(timeout=3600)
        if process.returncode:
            raise SystemExit(f"{strategy_name} failed (exit {process.returncode})")
        results += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return next(r["steps_per_sec"] for r in results if r["chief"])


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/statistician.py")
    if _CHILD.value:
        print(json.dumps(_time_in_this_process(config, _CHILD.value)), flush=True)
        return
    from oneshot_tf import precision

    times = {name: [] for name in _STRATEGIES.value}
    for _ in range(_ROUNDS.value):
        for name in _STRATEGIES.value:
            times[name].append(_measure(name))
            logging.info("%s: %.3f steps/s", name, times[name][-1])
    baseline = float(np.median(times["default"])) if "default" in times else None
    rows = []
    for name, values in times.items():
        median = float(np.median(values))
        rows.append(
            {
                "strategy": name,
                "steps_per_sec": [round(v, 3) for v in values],
                "median_steps_per_sec": round(median, 3),
                "median_sets_per_sec": round(median * config.data.batch_size, 2),
                "vs_default": baseline and round(median / baseline, 3),
            }
        )
    report = {
        "model": config.model,
        "cpu": precision.describe_cpu(),
        "precision": _PRECISION.value,
        "global_batch": config.data.batch_size,
        "steps_per_measurement": _STEPS.value,
        "rows": rows,
    }
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['cpu']}; {config.model}, {_PRECISION.value}, global batch {config.data.batch_size}")
    print(f"{'strategy':14} {'steps/s (median)':>16} {'sets/s':>8} {'vs default':>10}")
    for row in rows:
        print(
            f"{row['strategy']:14} {row['median_steps_per_sec']:16.3f} {row['median_sets_per_sec']:8.2f} "
            f"{row['vs_default'] if row['vs_default'] is not None else 'n/a':>10}"
        )


if __name__ == "__main__":
    cli.run(main)
