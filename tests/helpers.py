"""Shared test fixtures: where the read-only test data lives, tiny configs and models."""

import pathlib

from oneshot_tf import configs, models
from oneshot_tf.data import omniglot

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = omniglot.default_data_dir()
OMNIGLOT_DIR = DATA_DIR / "omniglot"


def tiny_config(model: str):
    """configs/<model>.py's `tiny` variant, reading the GMN arrays."""
    config = configs.get_config(model, "tiny")
    config.data.source = "gmn28"
    return config


def tiny_model(name: str, **overrides):
    """The registered model `name` built from its tiny config's model_kwargs (+ overrides)."""
    config = tiny_config(name)
    return models.get_model(config.model, **{**config.model_kwargs.to_dict(), **overrides})


def random_images(shape, seed: int = 0):
    """Random binary float32 images (20% ink), reproducible from `seed`."""
    import tensorflow as tf

    return tf.cast(tf.random.stateless_uniform(shape, [seed, 1]) < 0.2, tf.float32)
