"""Command-line tools that have no module of their own to be tested with."""

import json
import subprocess
import sys

from absl.testing import absltest

from tests import helpers


def _run_tool(name: str, *args):
    return subprocess.run(
        [sys.executable, str(helpers.REPO / "tools" / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=helpers.REPO,
    )


class TimeScoringChunkTest(absltest.TestCase):
    def test_reports_every_setting_of_every_round(self):
        out = self.create_tempfile().full_path
        done = _run_tool(
            "time_scoring_chunk.py", "--config=configs/gmn.py:tiny", "--shapes=2x3,1x2", "--xla=false", "--rounds=2",
            "--config.precision=float32", f"--out={out}",
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        report = json.loads(open(out).read())
        self.assertEqual(report["policy"], "float32")
        self.assertEqual(
            [(r["episodes"], r["samples"], r["xla"]) for r in report["rows"]], [(2, 3, False), (1, 2, False)]
        )
        for row in report["rows"]:
            self.assertLen(row["ms_per_episode_sample"], 2)
            self.assertGreater(row["median"], 0)
        self.assertIn("| 2 x 3 | False |", done.stdout)

    def test_a_malformed_shape_is_a_usage_error(self):
        done = _run_tool("time_scoring_chunk.py", "--config=configs/gmn.py:tiny", "--shapes=10by100")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("is not EPISODESxSAMPLES", done.stdout + done.stderr)


if __name__ == "__main__":
    absltest.main()
