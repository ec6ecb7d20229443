"""Gradient norms of a trained model, batch by batch: where a run's gradients explode.

  python tools/gradient_norms.py --config=configs/seqgen.py --workdir=runs/seqgen [--checkpoint=best]
      [--batches=30] [--above=1000] [--config.model_kwargs.detach_read_windows=True]

Restores the trained weights (not the weight average) of a checkpoint of --workdir in
config.precision and, for --batches batches of training sets (fixed episodes of the
train split, without augmentation: data.batch_size sets of data.set_size drawings),
prints the global norm of the gradient of the training loss (the negative bound per
image, as the trainer computes it before clipping; train.prefix_set_sizes and the
likelihood weight are left out) and the variables with the largest norms, then a JSON
summary. A config that computes the same function with other gradients (seqgen's
detach_read_windows) compares both on the same weights and batches.
"""

import json

import numpy as np
import tensorflow as tf
from absl import flags
from ml_collections import config_flags

from oneshot_tf import cli, precision
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, omniglot

_CONFIG = config_flags.DEFINE_config_file("config", None, "The model's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir to restore.", required=True)
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of --workdir.")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Data directory.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Training batches to take gradients on.")
_TOP = flags.DEFINE_integer("top", 3, "Variables named per batch, largest gradient norm first.")
_ABOVE = flags.DEFINE_float("above", 1000.0, "The summary counts the batches whose norm is above this.")
_SEED = flags.DEFINE_integer("seed", 0, "Episodes' seed; batch b is sampled with seed (seed, b).")


def gradient_norms(model, images: tf.Tensor, seed: tf.Tensor) -> tuple:
    """(loss per image, {variable path: gradient norm}) of one batch [B, N, 28, 28, 1]."""
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(model.elbo(images, seed, training=True)) / (images.shape[0] * images.shape[1])
    gradients = tape.gradient(loss, model.trainable_variables)
    return float(loss), {
        v.path: float(tf.norm(g)) for v, g in zip(model.trainable_variables, gradients) if g is not None
    }


def main(argv):
    del argv
    config = _CONFIG.value
    config.train.ema_decay = 0.0  # The trained weights: the ones the gradients move.
    precision.set_policy(config.precision)  # The training run's arithmetic.
    model = workdir_lib.restore_model(config, _WORKDIR.value, _CHECKPOINT.value).model
    splits = omniglot.load_configured_splits(config.data, _DATA_DIR.value, config.seed)
    batch_size = config.data.batch_size
    train = episodes.fixed_episodes(
        splits["train"], num_episodes=batch_size * _BATCHES.value, set_size=config.data.set_size, seed=_SEED.value
    )["images"]
    norms = []
    for b in range(_BATCHES.value):
        images = tf.constant(train[b * batch_size : (b + 1) * batch_size])
        loss, by_variable = gradient_norms(model, images, tf.constant([_SEED.value, b]))
        norms.append(float(np.sqrt(sum(n * n for n in by_variable.values()))))
        top = sorted(by_variable.items(), key=lambda item: -item[1])[: _TOP.value]
        print(f"batch {b}: loss {loss:.2f}  norm {norms[-1]:.3g}  " + ", ".join(f"{k} {n:.3g}" for k, n in top))
    summary = {
        "batches": len(norms),
        "median": round(float(np.median(norms)), 3),
        "max": float(f"{max(norms):.4g}"),
        "above": _ABOVE.value,
        "batches_above": sum(n > _ABOVE.value for n in norms),
        "norms": [float(f"{n:.4g}") for n in norms],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)
