"""Times scoring all positions of episodes in one pass against the naive loop.

  python tools/benchmark_one_pass.py --config=configs/gmn.py [--episodes=10 --num_samples=100]

The one-pass path is the model's `per_shot_log_weights` (GMN: a causal mask over
the support; Neural Statistician: running means of the statistic network); the
naive path is the base class's loop, one `log_weights` call per position t with
support x_<t. Timed twice: scoring with K importance samples (the per-shot table),
and the training gradient of sum_t ELBO(x_t | x_<t) with one sample per position.
Both run as tf.functions on the same random binary episodes; prints JSON with
seconds per call and the speed-ups.
"""

import json
import time

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from oneshot_tf import cli, models, precision

_CONFIG = config_flags.DEFINE_config_file("config", "configs/gmn.py", "Model config.")
_EPISODES = flags.DEFINE_integer("episodes", 10, "Episodes per call.")
_SET_SIZE = flags.DEFINE_integer("set_size", 10, "Positions per episode (T).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "Importance samples K.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per path.")


def _time(fn, *args) -> float:
    fn(*args)  # Trace and warm up.
    start = time.perf_counter()
    for _ in range(_REPEATS.value):
        fn(*args).numpy()
    return (time.perf_counter() - start) / _REPEATS.value


def main(argv):
    del argv
    config = _CONFIG.value
    precision.set_policy(config.precision)
    model = models.build_model(config.model, **config.model_kwargs.to_dict())
    if not model.one_pass_scoring:
        raise app.UsageError(f"{config.model} has no one-pass per_shot_log_weights to compare")
    episodes = tf.cast(
        tf.random.stateless_uniform([_EPISODES.value, _SET_SIZE.value, 28, 28, 1], [0, 0]) < 0.2, tf.float32
    )
    seed = tf.constant([1, 2])
    one_pass = tf.function(lambda e, s: model.per_shot_log_weights(e, _NUM_SAMPLES.value, s))
    naive = tf.function(lambda e, s: models.base.FewShotModel.per_shot_log_weights(model, e, _NUM_SAMPLES.value, s))
    one_pass_s = _time(one_pass, episodes, seed)
    naive_s = _time(naive, episodes, seed)

    # Training: the gradient of sum_t ELBO(x_t | x_<t) (one sample per position).
    def gradient_of(log_weights_fn):
        def step(e, s):
            with tf.GradientTape() as tape:
                loss = -tf.reduce_sum(log_weights_fn(e, s))
            return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, model.trainable_variables)])

        return tf.function(step)

    train_one_pass_s = _time(gradient_of(lambda e, s: model.per_shot_log_weights(e, 1, s)), episodes, seed)
    train_naive_s = _time(
        gradient_of(lambda e, s: models.base.FewShotModel.per_shot_log_weights(model, e, 1, s)), episodes, seed
    )
    print(
        json.dumps(
            {
                "model": config.model,
                "episodes": _EPISODES.value,
                "set_size": _SET_SIZE.value,
                "num_samples": _NUM_SAMPLES.value,
                "one_pass_seconds": round(one_pass_s, 4),
                "naive_loop_seconds": round(naive_s, 4),
                "speedup": round(naive_s / one_pass_s, 2),
                "training_gradient_one_pass_seconds": round(train_one_pass_s, 4),
                "training_gradient_naive_loop_seconds": round(train_naive_s, 4),
                "training_speedup": round(train_naive_s / train_one_pass_s, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    cli.run(main)
