"""Shared test fixtures: where the read-only test data lives, tiny configs."""

import importlib
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = pathlib.Path(os.environ.get("ONESHOT_TF_DATA_DIR", REPO.parent / "shared" / "data"))
OMNIGLOT_DIR = DATA_DIR / "omniglot"


def tiny_config(model: str):
    """configs/<model>.py's `tiny` variant, reading the GMN arrays."""
    config = importlib.import_module(f"configs.{model}").get_config("tiny")
    config.data.source = "gmn28"
    return config


def random_images(shape, seed: int = 0):
    """Random binary float32 images (20% ink), reproducible from `seed`."""
    import tensorflow as tf

    return tf.cast(tf.random.stateless_uniform(shape, [seed, 1]) < 0.2, tf.float32)
