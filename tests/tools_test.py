"""Command-line tools that have no module of their own to be tested with."""

import json
import pathlib
import subprocess
import sys

import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import main
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


def _trained_workdir(
    path: pathlib.Path, mean_t1_to_5: float, export_version: int = 3, trained_steps: int = 100
) -> pathlib.Path:
    """A workdir as ship.py finds it after --mode=eval, sample and export (a stand-in export:
    ship.py copies the files and reads only the variables' dtypes)."""
    export = path / "export" / "gmn" / str(export_version)
    tf.train.Checkpoint(w=tf.Variable(tf.zeros([3], tf.float16))).write(str(export / "variables" / "variables"))
    (export / "saved_model.pb").write_bytes(b"graph of version %d" % export_version)
    (path / "export" / "gmn" / str(export_version + 1)).mkdir()  # an export still being written
    (path / "samples").mkdir()
    (path / "samples" / "samples_step100.png").write_bytes(b"png")
    (path / "config.json").write_text("{}")
    eval_result = {
        "checkpoint_step": 100,
        "trained_steps": trained_steps,
        "checkpoint": "best",
        "precision": "float32",
        "episodes": 10,
        "num_samples": 5,
        "per_shot": [{"log_prob": mean_t1_to_5} for _ in range(10)],
        "mean_t1_to_5": {"log_prob": mean_t1_to_5},
    }
    (path / "eval.json").write_text(json.dumps(eval_result))
    return path


class ShipTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = pathlib.Path(self.create_tempdir().full_path)

    def _ship(self, workdir, *flags):
        return _run_tool("ship.py", f"--workdir={workdir}", "--model=gmn", f"--root={self.root}", *flags)

    def test_ships_the_newest_complete_export_with_its_record(self):
        workdir = _trained_workdir(pathlib.Path(self.create_tempdir().full_path), -80.0)
        done = self._ship(workdir, "--wall_time=5 min", "--command=python -m oneshot_tf.main --model=gmn")
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        shipped = self.root / "gmn"
        self.assertEqual((shipped / "1" / "saved_model.pb").read_bytes(), b"graph of version 3")
        self.assertEqual(sorted(p.name for p in shipped.iterdir()), [
            "1", "PROVENANCE.md", "config.json", "eval.json", "samples.png",
        ])  # fmt: skip
        provenance = (shipped / "PROVENANCE.md").read_text()
        self.assertIn("step 100 (best checkpoint of the run)\n", provenance)
        self.assertIn("weights stored as float16", provenance)
        self.assertIn("Wall time: 5 min", provenance)
        self.assertIn("mean of t = 1..5: -80.00", provenance)
        self.assertFalse(list(self.root.glob(".*partial")))

    def test_a_warm_started_run_is_shipped_with_the_steps_it_started_from(self):
        workdir = _trained_workdir(pathlib.Path(self.create_tempdir().full_path), -80.0, trained_steps=350)
        self.assertEqual(self._ship(workdir).returncode, 0)
        provenance = (self.root / "gmn" / "PROVENANCE.md").read_text()
        self.assertIn("step 100 (best checkpoint of the run); the run started from a model trained for 250 steps: "
                      "350 steps in all", provenance)  # fmt: skip

    def test_replaces_a_shipped_model_only_when_better_or_forced(self):
        self.assertEqual(
            self._ship(_trained_workdir(pathlib.Path(self.create_tempdir().full_path), -80.0)).returncode, 0
        )
        worse = _trained_workdir(pathlib.Path(self.create_tempdir().full_path), -81.0, export_version=7)
        done = self._ship(worse)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("-81.00 is not above the shipped -80.00", done.stdout + done.stderr)
        self.assertEqual((self.root / "gmn" / "1" / "saved_model.pb").read_bytes(), b"graph of version 3")
        self.assertEqual(self._ship(worse, "--force").returncode, 0)
        self.assertEqual((self.root / "gmn" / "1" / "saved_model.pb").read_bytes(), b"graph of version 7")

    def test_without_a_sample_grid_or_evaluation_nothing_is_shipped(self):
        workdir = _trained_workdir(pathlib.Path(self.create_tempdir().full_path), -80.0)
        (workdir / "samples" / "samples_step100.png").unlink()
        done = self._ship(workdir)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("run --mode=sample first", done.stdout + done.stderr)
        (workdir / "eval.json").unlink()
        done = self._ship(workdir)
        self.assertIn("run --mode=eval first", done.stdout + done.stderr)
        self.assertFalse(list(self.root.iterdir()))


class CheckExportTest(absltest.TestCase):
    def test_the_export_scores_like_the_checkpoint_it_came_from(self):
        config = helpers.tiny_config("iwae")
        workdir = pathlib.Path(self.create_tempdir().full_path)
        main.run_modes("train", config, workdir, helpers.DATA_DIR)
        main.run_modes("export", config, workdir, helpers.DATA_DIR)
        main.run_modes("export", config, workdir, helpers.DATA_DIR)
        done = _run_tool(
            "check_export.py", f"--workdir={workdir}", "--config=configs/iwae.py:tiny", "--config.data.source=gmn28",
            f"--data_dir={helpers.DATA_DIR}", "--episodes=3", "--num_samples=20", "--repeats=3", "--latency_calls=3",
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        report = json.loads(done.stdout[done.stdout.index("{") :])
        self.assertEqual(report["export"], str(workdir / "export" / "iwae" / "2"))
        self.assertEqual(report["checkpoint_step"], config.train.steps)
        # Same weights on both sides: the difference is Monte Carlo noise, a few spreads at most.
        self.assertGreater(report["monte_carlo_sd_nats"], 0)
        self.assertLess(abs(report["mean_difference_nats"]), 3 * report["monte_carlo_sd_nats"])
        self.assertGreaterEqual(report["fraction_within_3_sd"], 0.75)

    def test_without_an_export_it_says_what_to_run(self):
        # The export is looked for before the checkpoint is restored: an empty workdir will do.
        workdir = pathlib.Path(self.create_tempdir().full_path)
        done = _run_tool("check_export.py", f"--workdir={workdir}", "--config=configs/iwae.py:tiny")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("run --mode=export", done.stdout + done.stderr)


if __name__ == "__main__":
    absltest.main()
