"""pytest glue: absl flags (used by tf.test.TestCase temp dirs) count as parsed."""

import warnings

import keras
import pytest
from absl import flags

warnings.filterwarnings("ignore", category=DeprecationWarning)


def pytest_configure(config):
    del config
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """Training with precision=auto sets a global Keras policy; no test sees another's."""
    yield
    keras.mixed_precision.set_global_policy("float32")
