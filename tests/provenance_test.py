"""The commit a result records: oneshot_tf.provenance."""

import pathlib
import subprocess

from absl.testing import absltest

from oneshot_tf import provenance


def _git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip


class CodeCommitTest(absltest.TestCase):
    def test_names_the_checked_out_commit_and_says_when_tracked_files_changed(self):
        repo = pathlib.Path(self.create_tempdir().full_path)
        _git(repo, "init", "-q")
        package = repo / "package"
        package.mkdir()
        (package / "model.py").write_text("LAYERS = 3\n")
        _git(repo, "add", ".")
        _git(repo, "commit", "-q", "-m", "first")
        first = _git(repo, "rev-parse", "--short", "HEAD")
        self.assertEqual(provenance.code_commit(package), first)
        (package / "notes.txt").write_text("untracked files are not the code that ran\n")
        self.assertEqual(provenance.code_commit(package), first)
        (package / "model.py").write_text("LAYERS = 4\n")
        self.assertEqual(provenance.code_commit(package), first + "+changes")
        _git(repo, "commit", "-q", "-am", "second")
        second = _git(repo, "rev-parse", "--short", "HEAD")
        self.assertNotEqual(second, first)
        self.assertEqual(provenance.code_commit(package), second)

    def test_outside_a_checkout_it_is_unknown(self):
        self.assertEqual(provenance.code_commit(pathlib.Path(self.create_tempdir().full_path)), provenance.UNKNOWN)


if __name__ == "__main__":
    absltest.main()
