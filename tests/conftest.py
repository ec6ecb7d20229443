"""pytest glue: absl flags (used by tf.test.TestCase temp dirs) count as parsed."""

import warnings

from absl import flags

warnings.filterwarnings("ignore", category=DeprecationWarning)


def pytest_configure(config):
    del config
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
