"""Entry point of oneshot_tf's programs: a user's mistake is one line, a bug a traceback.

A `UserError` (flags, config, files) or a `DataError` (the data folder) ends the
program with `error: <message>` on stderr and exit status 1; anything else is a bug
and keeps its traceback.
"""

import contextlib
import sys

from absl import app

from oneshot_tf import errors
from oneshot_tf.data import omniglot


@contextlib.contextmanager
def user_errors_exit():
    """Turns a UserError or DataError raised inside into SystemExit("error: <message>")."""
    try:
        yield
    except (errors.UserError, omniglot.DataError) as e:
        sys.exit(f"error: {e}")


def run(main):
    """`absl.app.run(main)`, with user errors reported as `user_errors_exit` does."""

    def checked_main(argv):
        with user_errors_exit():
            return main(argv)

    app.run(checked_main)
