"""pytest glue: absl flags (used by tf.test.TestCase temp dirs) count as parsed;
tf.test.TestCase's inherited `test_session` (a context manager, not a test) is not
collected, so the summary counts real tests and real skips only; and the CPU is
split into two logical devices (before TF initialises its devices, which happens
once per process) so MirroredStrategy has two replicas to test on. Everything else
keeps running on the first one, /CPU:0.

The README's command runs the tests in two pytest-xdist worker processes (`-n 2
--dist=loadscope`: a class's tests, and so its setUpClass, stay in one worker); each
worker runs this file for itself. On a GPU, every process (workers and the programs
tests start) takes GPU memory as it needs it instead of all of it at start-up."""

import os
import warnings

from absl import flags

warnings.filterwarnings("ignore", category=DeprecationWarning)
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


LOGICAL_CPUS = 2


def pytest_configure(config):
    del config
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPUS)


def pytest_collection_modifyitems(config, items):
    del config
    items[:] = [item for item in items if item.name != "test_session"]
