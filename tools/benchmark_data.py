"""Measures the data path: source loading (uncached and cached) and episode throughput.

  python tools/benchmark_data.py [--data_dir=../shared/data] [--batch_size=64 --set_size=5]

Prints seconds to decode the upstream PNGs (into a fresh cache), to load them again
from the cache, to load the GMN arrays, and episode batches/s of the tf.data
pipeline, to compare with a training step rate.
"""

import json
import pathlib
import tempfile
import time

from absl import flags

from oneshot_tf import cli
from oneshot_tf.data import episodes, omniglot

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Episodes per batch.")
_SET_SIZE = flags.DEFINE_integer("set_size", 5, "Items per episode.")
_BATCHES = flags.DEFINE_integer("batches", 2000, "Batches to time.")


def _data_dir():
    return _DATA_DIR.value or omniglot.default_data_dir()


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv):
    del argv
    data_dir = pathlib.Path(_data_dir())
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        _, results["upstream_decode_s"] = _timed(lambda: omniglot.load_upstream(data_dir, cache_dir=cache))
        _, results["upstream_cached_s"] = _timed(lambda: omniglot.load_upstream(data_dir, cache_dir=cache))
    splits, results["gmn28_load_s"] = _timed(lambda: omniglot.load_splits("gmn28", data_dir))
    dataset = episodes.episode_dataset(
        splits["train"], batch_size=_BATCH_SIZE.value, set_size=_SET_SIZE.value, binarization="dynamic"
    )
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(iterator)
    seconds = time.perf_counter() - start
    results["episode_batches_per_s"] = _BATCHES.value / seconds
    results["images_per_s"] = _BATCHES.value * _BATCH_SIZE.value * _SET_SIZE.value / seconds
    print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    cli.run(main)
