"""Round-trip latency of the `sample` signature through the local server vs in-process.

  python tools/benchmark_serving.py --model_dir=pretrained/gmn [--requests=200 --shots=5 --batch=1]

Loads the newest version under --model_dir, calls `sample` (batch --batch, --shots
support drawings of a test character) --requests times in-process, then the same
through `python -m oneshot_tf.serve`'s REST API on a free 127.0.0.1 port (JSON encode,
HTTP, decode included), alternating A B A B in rounds; prints p50 / p90 / p99 in ms
and the CPU. Prints JSON.
"""

import json
import logging
import threading
import time
import urllib.request

import numpy as np
import tensorflow as tf
from absl import flags

from oneshot_tf import cli, precision, serve
from oneshot_tf.data import episodes, omniglot

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model base path (<dir>/<version>/).", required=True)
_REQUESTS = flags.DEFINE_integer("requests", 200, "Timed calls per path.")
_SHOTS = flags.DEFINE_integer("shots", 5, "Support drawings.")
_BATCH = flags.DEFINE_integer("batch", 1, "Support sets per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "A B rounds the calls are split into.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")


def _percentiles(seconds: list) -> dict:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}


def main(argv):
    del argv
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # No line per request.
    models = serve.load_models([_MODEL_DIR.value])
    ((name, model),) = models.items()
    splits = omniglot.load_splits(
        "auto", flags.FLAGS.data_dir or omniglot.default_data_dir()
    )  # serve.py defines --data_dir.
    support = episodes.fixed_episodes(splits["test"], num_episodes=_BATCH.value, set_size=_SHOTS.value, seed=0)[
        "images"
    ]
    seed = np.array([1, 2], np.int32)
    server = serve.make_server(serve.App(models), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}/v1/models/{name}:predict"
    body = json.dumps({"signature_name": "sample", "inputs": {"support": support.tolist(), "seed": seed.tolist()}})

    def in_process():
        model.signatures["sample"](support=tf.constant(support), seed=tf.constant(seed))["images"].numpy()

    def over_http():
        request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            json.loads(response.read())

    timings = {"in_process": [], "server": []}
    for fn in (in_process, over_http):  # Warm up both paths.
        for _ in range(5):
            fn()
    per_round = max(1, _REQUESTS.value // _ROUNDS.value)
    for _ in range(_ROUNDS.value):
        for key, fn in (("in_process", in_process), ("server", over_http)):
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                timings[key].append(time.perf_counter() - start)
    server.shutdown()
    result = {
        "model": name,
        "version": model.version,
        "batch": _BATCH.value,
        "shots": _SHOTS.value,
        "requests_per_path": per_round * _ROUNDS.value,
        "cpu": precision.describe_cpu(),
        **{key: _percentiles(values) for key, values in timings.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli.run(main)
