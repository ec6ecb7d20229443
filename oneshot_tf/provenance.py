"""Which code produced a result: the git commit of oneshot_tf's source tree.

eval.json records it, and tools/ship.py copies it into a shipped model's PROVENANCE.md:
the commit of the code that measured the numbers, not of whichever checkout ships them.
"""

import pathlib
import subprocess

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
UNKNOWN = "unknown"


def _git(source: pathlib.Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_commit(source: pathlib.Path = PACKAGE_DIR) -> str:
    """The short hash of the commit checked out where `source` lives, with `+changes` when
    tracked files there differ from it; `unknown` outside a git checkout (an installed
    wheel) or without git."""
    commit = _git(source, "rev-parse", "--short", "HEAD")
    if not commit:
        return UNKNOWN
    changes = _git(source, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return commit + ("+changes" if changes else "")
