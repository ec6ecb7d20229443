"""Errors a user causes and can fix from the command line.

`oneshot_tf.main` and the tools (through `oneshot_tf.cli`) print their message alone,
as one line, and exit 1; any other exception is a bug and keeps its traceback. Data
problems raise `oneshot_tf.data.omniglot.DataError` (the data package imports nothing
of ours).
"""


class UserError(Exception):
    """A mistake in flags, config or files; the message says what to change."""


class ConfigError(UserError, ValueError):
    """A config field (or flag) has a value the program cannot use."""


class CheckpointError(UserError, FileNotFoundError):
    """A workdir has no checkpoint to restore."""


class ExportNotFoundError(UserError, FileNotFoundError):
    """A path given as a SavedModel, or a folder of them (pretrained/<model> too), holds none."""


class WorkdirBusyError(UserError, RuntimeError):
    """Another run is training in the workdir a training run was given."""


class ClusterError(UserError, RuntimeError):
    """A multi-worker run lost a worker (or never saw all of them)."""
