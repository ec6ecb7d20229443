"""Entry point of oneshot_tf's programs: a user's mistake is one line, a bug a traceback.

A `UserError` (flags, config, files) or a `DataError` (the data folder) ends the
program with `error: <message>` on stderr and exit status 1; anything else is a bug
and keeps its traceback. A flag's value written `--flag=~/path` is read as the home
folder's path, as the shell reads `--flag ~/path`.
"""

import contextlib
import os
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


def expand_home(argv: list) -> list:
    """`--flag=~/path` -> `--flag=<home>/path` (also `~user/...`). Bash expands a leading ~
    in `--flag ~/path` but not after `=`, where it would name a folder called `~`."""
    expanded = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if arg.startswith("-") and equals and value.startswith("~"):
            arg = f"{name}={os.path.expanduser(value)}"
        expanded.append(arg)
    return expanded


def run(main):
    """`absl.app.run(main)` on `expand_home(sys.argv)`, with user errors reported as
    `user_errors_exit` does."""

    def checked_main(argv):
        with user_errors_exit():
            return main(argv)

    app.run(checked_main, argv=expand_home(sys.argv))
