"""pytest glue: absl flags (used by tf.test.TestCase temp dirs) count as parsed, and
tf.test.TestCase's inherited `test_session` (a context manager, not a test) is not
collected, so the summary counts real tests and real skips only."""

import warnings

from absl import flags

warnings.filterwarnings("ignore", category=DeprecationWarning)


def pytest_configure(config):
    del config
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
    del config
    items[:] = [item for item in items if item.name != "test_session"]
