"""Shipped models: every one in pretrained/ loads and answers its signatures; the
command line samples and scores with a shipped model or a workdir's checkpoint."""

import json
import pathlib
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import absltest, flagsaver

from oneshot_tf import errors, export, main, models, precision, pretrained
from tests import helpers

SHIPPED = sorted(p.parent.parent.name for p in pretrained.ROOT.glob("*/*/saved_model.pb"))


def _write_pngs(folder: pathlib.Path, images) -> list:
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i}.png"))
        pathlib.Path(paths[-1]).write_bytes(tf.io.encode_png(tf.cast((1.0 - image) * 255, tf.uint8)).numpy())
    return paths


class SavedModelDirTest(tf.test.TestCase):
    def test_a_folder_itself_a_base_path_its_newest_complete_version(self):
        base = pathlib.Path(self.create_tempdir())
        for version in ("1", "12", "3"):
            (base / version).mkdir()
            (base / version / "saved_model.pb").write_bytes(b"")
        (base / "40").mkdir()  # A version still being written: no saved_model.pb.
        self.assertEqual(pretrained.saved_model_dir(base), base / "12")
        self.assertEqual(pretrained.saved_model_dir(base / "3"), base / "3")

    def test_neither_is_a_config_error_naming_the_flag(self):
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(errors.ConfigError, f"^--export='{empty}' is neither a SavedModel folder"):
            pretrained.saved_model_dir(empty, "--export")


class ShippedModelsTest(tf.test.TestCase):
    def test_every_shipped_model_loads_and_answers(self):
        if not SHIPPED:
            self.skipTest(f"no model shipped in {pretrained.ROOT} yet")
        for name in SHIPPED:
            with self.subTest(name):
                self._check_shipped(name)

    def _check_shipped(self, name):
        folder = pretrained.model_dir(name)
        for extra in ("eval.json", "config.json", "PROVENANCE.md"):
            self.assertTrue((folder.parent / extra).exists(), f"pretrained/{name}/{extra}")
        self.assertTrue(list(folder.parent.glob("*.png")), f"pretrained/{name} has no sample grid")
        result = json.loads((folder.parent / "eval.json").read_text())
        self.assertEqual(result["model"], name)
        self.assertLen(result["per_shot"], 10)
        model = pretrained.load(name)
        support = helpers.random_images([2, 3, 28, 28, 1])
        probs, images = model.sample(support, [1, 2])
        self.assertEqual(probs.shape, (2, 28, 28, 1))
        self.assertEqual(set(np.unique(images)) - {0.0, 1.0}, set())
        log_prob = model.log_prob(support, helpers.random_images([2, 28, 28, 1], 1), 5, [0, 0]).numpy()
        self.assertTrue(np.all(np.isfinite(log_prob)) and np.all(log_prob < 0))
        size = sum(f.stat().st_size for f in folder.parent.rglob("*") if f.is_file())
        self.assertLess(size, 40 << 20, f"pretrained/{name} is {size} bytes; the limit is 40 MB")

    def test_per_shot_log_probs_seeds_each_position(self):
        if "gmn" not in SHIPPED:
            self.skipTest("no gmn shipped")
        model = pretrained.load("gmn")
        episodes = helpers.random_images([2, 3, 28, 28, 1]).numpy()
        table = model.per_shot_log_probs(episodes, 4, seed=7)
        self.assertEqual(table.shape, (2, 3))
        for t in range(3):
            column = model.log_prob(episodes[:, :t], episodes[:, t], 4, [7, t]).numpy()
            self.assertAllClose(table[:, t], column)
        self.assertNotAllClose(model.per_shot_log_probs(episodes, 4, seed=8), table)


class CommandLineTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = pathlib.Path(tf.compat.v1.test.get_temp_dir()) / "pretrained_test"
        config = helpers.tiny_config("gmn")
        cls.model = models.build_model(config.model, **config.model_kwargs.to_dict())
        export.export_model(cls.model, cls.root, "gmn")

    def _main(self, **flag_values):
        with (
            mock.patch.object(pretrained, "ROOT", self.root),
            flagsaver.flagsaver(model="gmn", config=helpers.tiny_config("gmn"), **flag_values),
            precision.policy_scope("float32"),
        ):
            main.main(["oneshot_tf.main"])

    def test_sample_from_given_pngs(self):
        tmp = pathlib.Path(self.create_tempdir())
        support = _write_pngs(tmp, helpers.random_images([3, 28, 28, 1]).numpy())
        out = tmp / "grid.png"
        self._main(pretrained=True, mode="sample", support=support, out=str(out), workdir=str(tmp / "w"))
        grid = tf.io.decode_png(out.read_bytes())
        samples_per_row = helpers.tiny_config("gmn").sample.samples_per_row
        self.assertEqual(grid.shape[0], 30 + 2)  # One row: the given drawings.
        self.assertEqual(grid.shape[1], (3 + samples_per_row) * 30 + 4 * 2)

    def test_sample_test_characters_by_default(self):
        tmp = pathlib.Path(self.create_tempdir())
        self._main(pretrained=True, mode="sample", workdir=str(tmp), data_dir=str(helpers.DATA_DIR))
        grid = tf.io.decode_png((tmp / "samples" / "pretrained_samples.png").read_bytes())
        self.assertEqual(grid.shape[0], helpers.tiny_config("gmn").sample.rows * 30 + 2)

    def test_score_prints_log_probs(self):
        tmp = pathlib.Path(self.create_tempdir())
        images = helpers.random_images([3, 28, 28, 1]).numpy()
        paths = _write_pngs(tmp, images)
        with mock.patch("builtins.print") as printed:
            self._main(pretrained=True, mode="score", support=paths[:2], query=paths[2:])
        line = printed.call_args_list[-1].args[0]
        self.assertRegex(line, r"log p\(.*2\.png \| 2 shots\) = -\d+\.\d\d nats \(\d\.\d{4} bits/dim\), K=4")
        expected = pretrained.load("gmn", self.root).log_prob(images[None, :2], images[2:], 4, [0, 0])
        self.assertIn(f"= {float(expected[0]):.2f} nats", line)

    def test_mistakes_are_one_line(self):
        cases = [
            (dict(pretrained=True, mode="train"), "--pretrained works with --mode=sample or --mode=score"),
            (dict(pretrained=True, mode="score"), "--mode=score needs --query"),
            (
                dict(pretrained=True, mode="score", query=["/nonexistent.png"]),
                "cannot read support image /nonexistent.png",
            ),
        ]
        for flag_values, message in cases:
            with self.assertRaises(SystemExit) as exit_:
                self._main(**flag_values)
            self.assertIn(message, str(exit_.exception.code))
        with self.assertRaisesRegex(errors.ExportNotFoundError, r"no shipped seqgen model .*shipped: gmn"):
            pretrained.model_dir("seqgen", self.root)


if __name__ == "__main__":
    absltest.main()
