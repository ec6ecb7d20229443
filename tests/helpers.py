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


def run_main(*args, env=None, **popen):
    """`python -m oneshot_tf.main ARGS` in the repo, reading the test data; a Popen whose
    stdout has both streams. `env` adds to (or overrides) the environment."""
    import os
    import subprocess
    import sys

    environment = dict(os.environ, ONESHOT_TF_DATA_DIR=str(DATA_DIR), **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "oneshot_tf.main", *args],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
