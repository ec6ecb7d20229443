"""Command-line tools that have no module of their own to be tested with."""

import json
import math
import pathlib

import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import classify, export, main, models, precision, train
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, few_shot, omniglot
from tests import helpers


class TimeScoringChunkTest(absltest.TestCase):
    def test_reports_every_setting_of_every_round(self):
        out = self.create_tempfile().full_path
        done = helpers.run_tool(
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
        done = helpers.run_tool("time_scoring_chunk.py", "--config=configs/gmn.py:tiny", "--shapes=10by100")
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
        "code_commit": "abc1234+changes",
        "episodes": 10,
        "num_samples": 5,
        "per_shot": [{"log_prob": mean_t1_to_5} for _ in range(10)],
        "mean_t1_to_5": {"log_prob": mean_t1_to_5},
        "joint_set": {"set_size": 5, "num_samples": 1000, "log_prob_per_item": -81.5, "stderr": 1.0},
    }
    (path / "eval.json").write_text(json.dumps(eval_result))
    return path


class ShipTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = pathlib.Path(self.create_tempdir().full_path)

    def _ship(self, workdir, *flags):
        return helpers.run_tool("ship.py", f"--workdir={workdir}", "--model=gmn", f"--root={self.root}", *flags)

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
        self.assertIn("Code: commit abc1234+changes of oneshot_tf (the evaluation's)", provenance)
        self.assertIn("importance-sampled over all the set's latents, K = 1000: -81.50 +- 1.00", provenance)
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


def _shipped_folder(root: pathlib.Path, name: str, mean_t1_to_5: float, **extra) -> None:
    """pretrained/<name>/ as results_table.py reads it: eval.json and config.json."""
    folder = root / name
    folder.mkdir(parents=True)
    per_shot = [{"t": t, "log_prob": mean_t1_to_5 - 10 + t, "stderr": 1.5} for t in range(1, 11)]
    result = {"model": name, "checkpoint_step": 100, "episodes": 10, "num_samples": 5, "per_shot": per_shot,
              "mean_t1_to_5": {"log_prob": mean_t1_to_5, "stderr": 1.25}} | extra  # fmt: skip
    (folder / "eval.json").write_text(json.dumps(result))
    (folder / "config.json").write_text(json.dumps({"eval": {"classification_queries": 40}}))


class ResultsTableTest(absltest.TestCase):
    def test_the_readme_table_is_the_shipped_models(self):
        done = helpers.run_tool("results_table.py", "--check")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr[-2000:])

    def test_a_row_per_eval_json_best_mean_first_then_the_published_rows(self):
        root = pathlib.Path(self.create_tempdir().full_path)
        classification = {"random_5way_1shot_kl_error": 0.1, "random_5way_1shot_likelihood_error": 0.2}
        joint = {"log_prob_per_item": -91.361, "stderr": 1.123, "num_samples": 1000}
        _shipped_folder(root, "statistician", -90.0, trained_steps=1350, classification=classification,
                        joint_set=joint)  # fmt: skip
        _shipped_folder(root, "gmn", -80.0, classification={"random_20way_1shot_likelihood_error": 0.065})
        (root / "notes").mkdir()  # a folder without eval.json is not a model
        done = helpers.run_tool("results_table.py", f"--root={root}")
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        lines = done.stdout.splitlines()
        self.assertEqual(
            lines[2],
            "| `gmn` (`pretrained/gmn`) | 100 | -89.00 +- 1.50 | -88.00 +- 1.50 | -85.00 +- 1.50 "
            "| -80.00 +- 1.25 |  |  | 93.5% (likelihood) | K = 5, 10 episodes; 40 queries a task |",
        )
        self.assertEqual(lines[3], "| `statistician` (`pretrained/statistician`) | 1,350 | -99.00 +- 1.50 | -98.00 +- 1.50 "
                                   "| -95.00 +- 1.50 | -90.00 +- 1.25 | -91.36 +- 1.12 (K = 1000) | 90.0% (kl) |  "
                                   "| K = 5, 10 episodes; 40 queries a task |")  # fmt: skip
        self.assertIn(
            "| GMN, arXiv 1612.02192 v1 (items with replacement) |  | -90.9 | -82.8 | -74.2 | -80.6 |", lines[6]
        )
        self.assertIn("| SCHA-VAE (LAG), Giannone & Winther 2022 |  |  |  |  |  | -71.5 |", done.stdout)
        self.assertIn("|  |  |  |  |  |  | 98.1% | 93.2% | reported |", done.stdout)
        self.assertEqual(len({line.count("|") for line in lines}), 1, "every row has the header's columns")

    def test_write_replaces_only_the_marked_table_and_check_finds_a_stale_one(self):
        root = pathlib.Path(self.create_tempdir().full_path)
        _shipped_folder(root, "gmn", -80.0)
        readme = pathlib.Path(self.create_tempfile(content=(
            "# Title\n\nbefore\n<!-- results_table: begin (generated by `python tools/results_table.py --write`) -->\n"
            "| old table |\n<!-- results_table: end -->\nafter\n"
        )).full_path)  # fmt: skip
        args = (f"--root={root}", f"--readme={readme}")
        stale = helpers.run_tool("results_table.py", *args, "--check")
        self.assertEqual(stale.returncode, 1)
        self.assertIn("run python tools/results_table.py --write", stale.stderr)
        self.assertEqual(helpers.run_tool("results_table.py", *args, "--write").returncode, 0)
        table = helpers.run_tool("results_table.py", f"--root={root}").stdout
        text = readme.read_text()
        self.assertTrue(text.startswith("# Title\n\nbefore\n<!-- results_table: begin"))
        self.assertTrue(text.endswith("-->\n" + table + "<!-- results_table: end -->\nafter\n"))
        self.assertEqual(helpers.run_tool("results_table.py", *args, "--check").returncode, 0)
        readme.write_text("no markers\n")
        done = helpers.run_tool("results_table.py", *args, "--write")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("exactly one pair of markers", done.stderr)
        self.assertEqual(readme.read_text(), "no markers\n")


class FewShotAccuracyTest(tf.test.TestCase):
    def test_reports_the_checkpoints_accuracy_bound_and_context_information(self):
        config = helpers.tiny_config("statistician")
        config.precision = "float32"
        config.train.steps = 4
        workdir = self.create_tempdir().full_path
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        out = pathlib.Path(self.create_tempdir().full_path) / "curve.jsonl"
        done = helpers.run_tool(
            "few_shot_accuracy.py", "--config=configs/statistician.py:tiny", "--config.data.source=gmn28",
            "--config.precision=float32", f"--workdir={workdir}", "--queries=40", "--sets=20",
            f"--data_dir={helpers.DATA_DIR}", f"--out={out}",
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        line = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertEqual(json.loads(out.read_text()), line)
        self.assertEqual((line["step"], line["checkpoint"], line["weights"]), (4, "latest", "average"))
        # The tool's numbers are the model's on the tasks and sets it names.
        with precision.policy_scope("float32"):
            model = workdir_lib.restore_model(config, workdir, "latest").model
            test = omniglot.load_configured_splits(config.data, helpers.DATA_DIR, config.seed)["test"]
            for ways, shots in ((5, 1), (20, 1), (5, 5)):
                task = few_shot.random_episodes(test, ways=ways, shots=shots, num_episodes=40 // ways, seed=0)
                error = classify.error_rate(model, task, "kl", num_samples=config.eval.classification_num_samples)
                self.assertAlmostEqual(line[f"{ways}way_{shots}shot_kl_accuracy"], round(1 - error, 4))
                stderr = math.sqrt(error * (1 - error) / task["labels"].size)
                self.assertAlmostEqual(line[f"{ways}way_{shots}shot_kl_stderr"], round(stderr, 4))
            sets = episodes.fixed_episodes(test, num_episodes=20, set_size=config.data.set_size, seed=0)["images"]
            for size in (1, config.data.set_size):
                information = classify.context_information(model, sets[:, :size])
                self.assertAlmostEqual(line[f"test_context_kl_set{size}"], round(information["kl"], 3))
                self.assertAlmostEqual(line[f"test_context_max_dim_kl_set{size}"], round(information["max_dim_kl"], 3))
                self.assertEqual(line[f"test_context_active_dims_set{size}"], information["active_dims"])
            by_layer = model.latent_kl_by_layer(tf.constant(sets), tf.constant([0, 1]))
            self.assertAllClose(line["test_item_latent_kl_by_layer"], tf.reduce_mean(by_layer, [0, 1]), atol=1e-3)
        self.assertEqual(line["context_dims"], config.model_kwargs.context_size)
        self.assertIn("test_bound", line)
        self.assertIn("val_bound", line)

    def test_fewer_queries_than_ways_is_a_usage_error(self):
        done = helpers.run_tool("few_shot_accuracy.py", "--config=configs/statistician.py:tiny", "--workdir=/nonexistent",
                         "--queries=5")  # fmt: skip
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("--queries=5: a 20-way task needs at least 20", done.stderr)


class CheckExportTest(absltest.TestCase):
    def test_the_export_scores_like_the_checkpoint_it_came_from(self):
        config = helpers.tiny_config("iwae")
        workdir = pathlib.Path(self.create_tempdir().full_path)
        main.run_modes("train", config, workdir, helpers.DATA_DIR)
        main.run_modes("export", config, workdir, helpers.DATA_DIR)
        main.run_modes("export", config, workdir, helpers.DATA_DIR)
        done = helpers.run_tool(
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
        done = helpers.run_tool("check_export.py", f"--workdir={workdir}", "--config=configs/iwae.py:tiny")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("run --mode=export", done.stdout + done.stderr)


class SeqgenWindowsTest(tf.test.TestCase):
    def test_reports_the_windows_and_the_bounds_terms_of_an_export(self):
        config = helpers.tiny_config("seqgen")
        model = models.build_model("seqgen", **config.model_kwargs.to_dict())
        # The windows' kernels are zero: their biases fix them.
        model.write_params.dense.bias.assign([0.5, -0.5, 0.2, -0.2])
        model.target_read.dense.bias.assign([1.0, 1.0, 0.0, 0.0])
        model.support_read.dense.bias.assign([-1.0, -1.0, 0.3, 0.3])
        root = self.create_tempdir().full_path
        export.export_model(model, root, "seqgen")
        done = helpers.run_tool(
            "seqgen_windows.py", "--config=configs/seqgen.py:tiny", "--config.data.source=gmn28",
            f"--export={root}/seqgen", f"--data_dir={helpers.DATA_DIR}", "--episodes=3", "--blocks=2",
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        report = json.loads(done.stdout[done.stdout.index("{") :])
        scales = [0.1 + 1 / (1 + math.exp(-1.5)), 0.1 + 1 / (1 + math.exp(-0.5))]
        write = report["windows"]["write"]
        self.assertAlmostEqual(write["scale"]["mean"], sum(scales) / 2, places=3)
        self.assertAlmostEqual(write["scale"]["min"], min(scales), places=3)
        self.assertAlmostEqual(write["scale"]["max"], max(scales), places=3)
        self.assertAlmostEqual(write["shift_std"], math.tanh(0.2), places=3)
        for name, scale in (("target_read", 0.1 + 1 / (1 + math.exp(-2))), ("support_read", 0.6)):
            self.assertAlmostEqual(report["windows"][name]["scale"]["mean"], scale, places=3, msg=name)
            self.assertAlmostEqual(report["windows"][name]["shift_std"], 0.0, places=3, msg=name)
        self.assertEqual([row["t"] for row in report["per_shot"]], list(range(1, config.data.set_size + 1)))
        # The KL recorded step by step adds up to the KL the model returns for the bound.
        mean_kl = sum(row["kl"] for row in report["per_shot"]) / config.data.set_size
        self.assertLen(report["kl_by_step_block"], 2)
        self.assertAlmostEqual(sum(report["kl_by_step_block"]), mean_kl, delta=0.02 + 1e-3 * mean_kl)
        self.assertTrue(all(row["log_p_x_given_z"] < 0 for row in report["per_shot"]))

    def test_another_models_config_is_a_usage_error(self):
        done = helpers.run_tool("seqgen_windows.py", "--config=configs/gmn.py:tiny", "--export=/nonexistent")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("is a gmn config", done.stderr)


class GradientNormsTest(tf.test.TestCase):
    def test_prints_each_batchs_gradient_norm_of_the_trained_weights(self):
        config = helpers.tiny_config("seqgen")
        config.precision = "float32"
        config.train.steps = 3
        config.train.ema_decay = 0.9  # The tool reads the trained weights, not the average.
        workdir = self.create_tempdir().full_path
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        done = helpers.run_tool(
            "gradient_norms.py", "--config=configs/seqgen.py:tiny", "--config.data.source=gmn28",
            "--config.precision=float32", f"--workdir={workdir}", "--checkpoint=latest", "--batches=2",
            "--above=0", f"--data_dir={helpers.DATA_DIR}",
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        lines = done.stdout.strip().splitlines()
        self.assertTrue(lines[0].startswith("batch 0: loss ") and lines[1].startswith("batch 1: loss "), lines)
        summary = json.loads(lines[-1])
        self.assertEqual((summary["batches"], summary["batches_above"]), (2, 2))
        config.train.ema_decay = 0.0
        with precision.policy_scope("float32"):
            model = workdir_lib.restore_model(config, workdir, "latest").model
            train_split = omniglot.load_configured_splits(config.data, helpers.DATA_DIR, config.seed)["train"]
            sets = episodes.fixed_episodes(
                train_split, num_episodes=2 * config.data.batch_size, set_size=config.data.set_size, seed=0
            )["images"]
            batch = tf.constant(sets[config.data.batch_size :])
            with tf.GradientTape() as tape:
                loss = (
                    -tf.reduce_sum(model.elbo(batch, tf.constant([0, 1]), training=True))
                    / batch.shape[:2].num_elements()
                )
            norm = tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables))
        self.assertAllClose(summary["norms"][1], norm, rtol=1e-3)

    def test_a_workdir_without_a_checkpoint_is_a_usage_error(self):
        done = helpers.run_tool(
            "gradient_norms.py", "--config=configs/seqgen.py:tiny", f"--workdir={self.create_tempdir()}"
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("checkpoint", done.stderr)
        self.assertNotIn("Traceback", done.stderr)


if __name__ == "__main__":
    absltest.main()
