"""Checks an exported SavedModel against the in-process evaluator and times `sample`.

  python tools/check_export.py --workdir=runs/iwae --config=configs/iwae.py [--episodes=100 --num_samples=1000]

Scores x_t given x_<t on test episodes (t = 1..T) with the exported `log_prob`
signature and with oneshot_tf.evaluate (independent Monte Carlo samples), and
reports their mean difference next to the Monte Carlo spread of the exported
estimate over seeds. Then times the `sample` signature at batch 1, 5 shots.
"""

import json
import pathlib
import time

import numpy as np
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from oneshot_tf import cli, evaluate, precision, pretrained
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, omniglot

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with checkpoints and export/.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "The workdir's config file[:variant] (and overrides).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_EPISODES = flags.DEFINE_integer("episodes", 100, "Test episodes.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Importance samples K.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Seeds for the Monte Carlo spread.")
_LATENCY_CALLS = flags.DEFINE_integer("latency_calls", 200, "Timed `sample` calls.")


def _data_dir():
    return _DATA_DIR.value or omniglot.default_data_dir()


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required (the workdir's, e.g. configs/iwae.py)")
    precision.set_policy(config.precision)
    workdir = pathlib.Path(_WORKDIR.value)
    export = workdir_lib.newest_export(workdir, config.model)
    adapter = pretrained.SavedModelAdapter(export)
    model, step, *_ = workdir_lib.restore_model(config, workdir)
    splits = omniglot.load_configured_splits(config.data, _data_dir(), config.seed)
    test = episodes.fixed_episodes(splits["test"], num_episodes=_EPISODES.value, set_size=4, seed=0)["images"]
    evaluator = evaluate.per_shot_log_probs(model, test, num_samples=_NUM_SAMPLES.value, seed=0)
    exported = np.stack(
        [adapter.per_shot_log_probs(test, _NUM_SAMPLES.value, seed=r + 1) for r in range(_REPEATS.value)]
    )
    difference = evaluator - exported.mean(axis=0)
    spread = exported.std(axis=0, ddof=1)
    support = tf.constant(test[:1, :4].repeat(2, axis=1)[:, :5])
    for _ in range(5):
        adapter.sample(support, tf.constant([0, 0]))
    latencies = []
    for i in range(_LATENCY_CALLS.value):
        start = time.perf_counter()
        adapter.sample(support, tf.constant([i, 0]))
        latencies.append(time.perf_counter() - start)
    report = {
        "export": str(export),
        "checkpoint_step": step,
        "episodes": _EPISODES.value,
        "num_samples": _NUM_SAMPLES.value,
        "mean_abs_difference_nats": float(np.abs(difference).mean()),
        "mean_difference_nats": float(difference.mean()),
        "monte_carlo_sd_nats": float(spread.mean()),
        "fraction_within_3_sd": float((np.abs(difference) <= 3 * spread * np.sqrt(1 + 1 / _REPEATS.value)).mean()),
        "sample_latency_ms_median_batch1_5shots": 1000 * float(np.median(latencies)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run(main)
