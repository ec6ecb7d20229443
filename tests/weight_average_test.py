"""The weight average (train.ema_decay): what it averages and when, where it is saved,
and what evaluation restores."""

import json
import pathlib

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import errors, main, plots, train, weight_average
from oneshot_tf import workdir as workdir_lib
from tests import helpers


def _saved_averages(prefix: str, count: int) -> list:
    return [
        tf.train.load_variable(prefix, f"{weight_average.CHECKPOINT_KEY}/averages/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        for i in range(count)
    ]


class WeightAverageTest(tf.test.TestCase):
    def test_each_taken_step_moves_the_average_with_its_warm_up(self):
        config = helpers.tiny_config("statistician")
        config.data.batch_size = 2
        config.train.ema_decay = 0.5
        trainer = train.Trainer(config)
        variables = weight_average.averaged_variables(trainer.model)
        self.assertTrue(any(not v.trainable for v in variables), "batch-norm statistics are averaged too")
        shape = [2, config.data.set_size, 28, 28, 1]
        batches = [helpers.random_images(shape, seed=s) for s in range(3)] + [tf.fill(shape, np.nan)]
        iterator = iter(tf.data.Dataset.from_tensor_slices({"images": tf.stack(batches)}))
        expected = [v.numpy() for v in variables]
        for n in range(3):
            trainer.train(iterator, 1)
            decay = min(0.5, (1 + n) / (10 + n))
            expected = [e - (1 - decay) * (e - v.numpy()) for e, v in zip(expected, variables)]
            for average, value in zip(trainer.average.averages, expected):
                self.assertAllClose(average, value, rtol=1e-5, atol=1e-6)
        # A skipped (non-finite) step is not a step of the average either.
        self.assertEqual(trainer.train(iterator, 1)[2], 1.0)
        self.assertEqual(int(trainer.average.updates.numpy()), 3)
        for average, value in zip(trainer.average.averages, expected):
            self.assertAllClose(average, value, rtol=1e-5, atol=1e-6)

        trained = [v.numpy() for v in variables]
        self.assertFalse(all(np.allclose(t, e) for t, e in zip(trained, expected)))
        with trainer.average.applied():
            for v, value in zip(variables, expected):
                self.assertAllClose(v.numpy(), value, rtol=1e-5, atol=1e-6)
        for v, value in zip(variables, trained):
            self.assertAllEqual(v.numpy(), value)

    def test_training_saves_the_average_and_evaluation_uses_it(self):
        config = helpers.tiny_config("vae")
        config.train.ema_decay = 0.5
        config.train.steps = 3
        config.train.eval_every = 1
        workdir = self.create_tempdir().full_path
        with self.assertLogs("absl", level="INFO") as logs:
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        self.assertRegex("\n".join(logs.output), r"step 3  validation bound \S+ nats/image \(weight average; trained")
        curve = plots.read_curve(workdir)
        self.assertEqual((curve["step"], curve["trained_step"]), ([1, 2, 3], [1, 2, 3]))
        self.assertNotEqual(curve["val_bound"], curve["val_bound_trained"])
        figure = plots.learning_curve_figure(curve, pathlib.Path(workdir, "curve.png"))
        self.assertGreater(tf.io.decode_png(figure.read_bytes()).shape[0], 200)

        restored = workdir_lib.restore_model(config, workdir, "latest")
        self.assertEqual(restored.weights, "average")
        variables = weight_average.averaged_variables(restored.model)
        prefix = workdir_lib.newest_checkpoint(pathlib.Path(workdir, workdir_lib.CHECKPOINTS))
        for v, saved in zip(variables, _saved_averages(prefix, len(variables))):
            self.assertAllEqual(v.numpy(), saved)
        config.train.ema_decay = 0.0
        trained = workdir_lib.restore_model(config, workdir, "latest")
        self.assertEqual(trained.weights, "trained")
        self.assertFalse(
            all(
                np.allclose(a.numpy(), b.numpy())
                for a, b in zip(variables, weight_average.averaged_variables(trained.model))
            )
        )

        config.train.ema_decay = 0.5
        main.run_modes("eval", config, workdir, helpers.DATA_DIR)
        self.assertEqual(json.loads(pathlib.Path(workdir, "eval.json").read_text())["weights"], "average")

    def test_a_run_trained_without_an_average_starts_one_when_resumed(self):
        config = helpers.tiny_config("vae")
        config.train.steps = 2
        workdir = self.create_tempdir().full_path
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        config.train.ema_decay = 0.9
        with self.assertLogs("absl", level="WARNING") as logs:
            self.assertEqual(workdir_lib.restore_model(config, workdir, "latest").weights, "trained")
        self.assertIn("holds no weight average (train.ema_decay is set): using its trained weights", logs.output[0])
        config.train.steps = 4
        with self.assertLogs("absl", level="INFO") as logs:
            self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 4)
        self.assertIn("holds no weight average: the average starts from its weights", "\n".join(logs.output))
        self.assertEqual(workdir_lib.restore_model(config, workdir, "latest").weights, "average")
        prefix = workdir_lib.newest_checkpoint(pathlib.Path(workdir, workdir_lib.CHECKPOINTS))
        self.assertEqual(tf.train.load_variable(prefix, "weight_average/updates/.ATTRIBUTES/VARIABLE_VALUE"), 2)

    def test_a_decay_outside_0_1_is_a_config_error(self):
        config = helpers.tiny_config("vae")
        config.train.ema_decay = 1.0
        with self.assertRaisesRegex(errors.ConfigError, r"train.ema_decay must be in \(0, 1\)"):
            train.Trainer(config)


if __name__ == "__main__":
    absltest.main()
