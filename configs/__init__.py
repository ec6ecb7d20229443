"""Configs as code: `configs/<model>.py` builds an ml_collections ConfigDict.

Installed as the package `oneshot_tf.configs` (setup.py maps this folder there), so
a config file names its neighbours as `oneshot_tf.configs.<name>` from anywhere;
`--config=configs/<name>.py` loads one by path.
"""

import importlib

from oneshot_tf import errors


def get_config(name: str, variant: str = "default"):
    """configs/<name>.py's `get_config(variant)`; ConfigError for an unknown name."""
    try:
        module = importlib.import_module(f"oneshot_tf.configs.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"oneshot_tf.configs.{name}":
            raise
        raise errors.ConfigError(f"no config {name!r} in oneshot_tf.configs") from e
    return module.get_config(variant)
