"""Time of one chunk of the per-shot scoring, by chunk shape and XLA setting, A B A B.

  python tools/time_scoring_chunk.py --config=configs/gmn.py \
      [--shapes=10x100,10x25,10x10] [--xla=false,true] [--rounds=3] [--out=chunk.json]

The per-shot table (`evaluate.per_shot_log_probs`) scores `eval.batch_size` episodes
with `eval.chunk_size` importance samples at a time: one call of
`model.per_shot_log_weights` and a log-sum-exp over the samples. For each
EPISODESxSAMPLES shape and jit_compile setting this traces that call once, then times
the settings in turn, --rounds times (each round calls every setting for about 2,000
episode-samples), and prints the median ms per episode-sample and per setting: which
chunk shape (`eval.batch_size`, `eval.chunk_size`) and whether XLA suit this machine.
The model is randomly initialised: the time does not depend on the weights.
"""

import json
import pathlib
import statistics
import time

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from oneshot_tf import cli, models, precision

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file[:variant].")
_SHAPES = flags.DEFINE_list("shapes", ["10x100", "10x25", "10x10"], "EPISODESxSAMPLES chunk shapes to time.")
_XLA = flags.DEFINE_list("xla", ["false", "true"], "jit_compile settings to time (false, true).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds over all settings (A B A B).")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")
_EPISODE_SAMPLES_PER_CALL = 2000


def _shape(text: str) -> tuple:
    try:
        episodes, samples = (int(n) for n in text.lower().split("x"))
    except ValueError as e:
        raise app.UsageError(f"--shapes: {text!r} is not EPISODESxSAMPLES, e.g. 10x100") from e
    if episodes < 1 or samples < 1:
        raise app.UsageError(f"--shapes: {text!r} needs at least 1 episode and 1 sample")
    return episodes, samples


def _jit(text: str) -> bool:
    if text.lower() not in ("false", "true"):
        raise app.UsageError(f"--xla takes false or true, got {text!r}")
    return text.lower() == "true"


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/gmn.py")
    shapes, jits = [_shape(s) for s in _SHAPES.value], [_jit(x) for x in _XLA.value]
    tf.get_logger().setLevel("ERROR")  # One tf.function per setting is intended, not retracing.
    policy = precision.set_policy(config.precision)
    model = models.build_model(config.model, **config.model_kwargs.to_dict())
    seed = tf.constant([0, 0])
    settings = {}
    for episodes, samples in shapes:
        images = tf.cast(
            tf.random.stateless_uniform([episodes, config.eval.set_size, 28, 28, 1], [1, 2]) < 0.2, tf.float32
        )
        for jit in jits:
            score = tf.function(
                lambda x, k=samples: tf.reduce_logsumexp(model.per_shot_log_weights(x, k, seed), axis=0),
                jit_compile=jit,
            )
            start = time.perf_counter()
            score(images).numpy()
            print(f"traced {episodes}x{samples} xla={jit} in {time.perf_counter() - start:.1f} s", flush=True)
            settings[(episodes, samples, jit)] = (score, images, [])
    for round_index in range(_ROUNDS.value):
        for (episodes, samples, jit), (score, images, times) in settings.items():
            calls = max(1, _EPISODE_SAMPLES_PER_CALL // (episodes * samples))
            start = time.perf_counter()
            for _ in range(calls):
                score(images).numpy()
            times.append(1e3 * (time.perf_counter() - start) / (calls * episodes * samples))
            print(f"round {round_index + 1}: {episodes}x{samples} xla={jit}: {times[-1]:.3f} ms per episode-sample")
    rows = [
        {"episodes": e, "samples": k, "xla": jit, "ms_per_episode_sample": [round(t, 4) for t in times],
         "median": round(statistics.median(times), 4)}
        for (e, k, jit), (_, _, times) in settings.items()
    ]  # fmt: skip
    print(f"\n{config.model}, {policy} policy, T = {config.eval.set_size}; median of {_ROUNDS.value} rounds:")
    print("| episodes x samples | XLA | ms per episode-sample |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['episodes']} x {row['samples']} | {row['xla']} | {row['median']:.3f} |")
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(
            json.dumps({"config": config.model, "policy": policy, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    cli.run(main)
