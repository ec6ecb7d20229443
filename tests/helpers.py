"""Shared test fixtures: where the read-only test data lives, tiny configs and models."""

import os
import pathlib
import subprocess
import sys

from oneshot_tf import configs, models
from oneshot_tf.data import omniglot

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = omniglot.default_data_dir()
OMNIGLOT_DIR = DATA_DIR / "omniglot"


def run_python(*args, home=None) -> subprocess.CompletedProcess:
    """`python <args>` from the repo, stdout and stderr captured as text, bounded at 300 s;
    `home` sets $HOME."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=os.environ | {"HOME": home} if home else None,
    )


def run_tool(name: str, *args, home=None) -> subprocess.CompletedProcess:
    """tools/<name> run as `run_python` runs it."""
    return run_python(REPO / "tools" / name, *args, home=home)


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
