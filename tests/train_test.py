"""End-to-end: train, resume, evaluate, sample, export on the tiny configs."""

import json
import os
import pathlib
import signal
import time
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import classify, errors, main, models, plots, precision, provenance, train
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import omniglot
from tests import helpers


def _checkpoint_steps(workdir) -> list:
    return sorted(
        int(p.name.split("-")[1].split(".")[0]) for p in pathlib.Path(workdir, "checkpoints").glob("ckpt-*.index")
    )


class EndToEndTest(tf.test.TestCase):
    def test_all_modes_write_the_workdir(self):
        config = helpers.tiny_config("iwae")
        workdir = pathlib.Path(self.create_tempdir())
        main.run_modes("all", config, workdir, helpers.DATA_DIR)

        result = json.loads((workdir / "eval.json").read_text())
        for key in ("model", "source", "split", "c_test", "episodes", "num_samples", "seed", "checkpoint_step"):
            self.assertIn(key, result)
        self.assertEqual(result["source"], "gmn28")
        self.assertEqual(result["checkpoint_step"], 2)
        self.assertEqual(result["trained_steps"], 2)  # Trained from scratch: nothing before step 0.
        self.assertEqual(result["code_commit"], provenance.code_commit())
        self.assertEqual([row["t"] for row in result["per_shot"]], list(range(1, 11)))
        for row in result["per_shot"]:
            self.assertTrue(np.isfinite(row["log_prob"]) and row["log_prob"] < 0)
            self.assertGreater(row["stderr"], 0)
            self.assertAllClose(row["bits_per_dim"], -row["log_prob"] / (784 * np.log(2)), atol=1e-4)
        # The mean of t = 1..5 is the mean over episodes of each episode's mean: with
        # equal episode counts per position, the mean of the first five rows.
        self.assertAllClose(
            result["mean_t1_to_5"]["log_prob"], np.mean([row["log_prob"] for row in result["per_shot"][:5]]), atol=1e-3
        )
        self.assertNotIn("joint_set", result)  # The IWAE does not score sets jointly.
        figure = tf.io.decode_png((workdir / "per_shot.png").read_bytes())
        self.assertGreater(figure.shape[0], 200)
        curve = plots.read_curve(workdir)
        self.assertEqual(curve["step"], [2])  # tiny validates at its last step.
        self.assertEqual(curve["train_step"], [1, 2])

        with config.unlocked():
            config.eval.c_test = 2
        main.run_modes("eval", config, workdir, helpers.DATA_DIR)
        two_characters = json.loads((workdir / "eval_c2.json").read_text())
        self.assertEqual(two_characters["c_test"], 2)
        self.assertTrue((workdir / "per_shot_c2.png").exists())
        self.assertEqual(json.loads((workdir / "eval.json").read_text()), result)

        with config.unlocked():
            config.eval.c_test = 1
            config.eval.with_replacement = True
        main.run_modes("eval", config, workdir, helpers.DATA_DIR)
        with_replacement = json.loads((workdir / "eval_with_replacement.json").read_text())
        self.assertTrue(with_replacement["with_replacement"])
        self.assertNotEqual(with_replacement["per_shot"], result["per_shot"])
        self.assertTrue((workdir / "per_shot_with_replacement.png").exists())
        self.assertEqual(json.loads((workdir / "eval.json").read_text()), result)

        png = tf.io.decode_png((workdir / "samples" / "samples_step2.png").read_bytes())
        rows = config.sample.rows
        self.assertEqual(png.shape[0], rows * 30 + 2)
        self.assertTrue(list((workdir / "tensorboard" / "train").glob("events.*")))

        exported = workdir / "export" / "iwae" / "1"
        self.assertTrue((exported / "saved_model.pb").exists())
        loaded = tf.saved_model.load(str(exported))
        support = tf.zeros([2, 3, 28, 28, 1])
        a = loaded.signatures["sample"](support=support, seed=tf.constant([1, 2]))
        b = loaded.signatures["serving_default"](support=support, seed=tf.constant([1, 2]))
        self.assertAllEqual(a["images"], b["images"])
        self.assertEqual(a["probs"].shape, (2, 28, 28, 1))
        log_prob = loaded.signatures["log_prob"](
            support=support, query=tf.zeros([2, 28, 28, 1]), num_samples=tf.constant(4), seed=tf.constant([0, 0])
        )["log_prob"]
        self.assertEqual(log_prob.shape, (2,))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"with values in \[0, 1\]"):
            loaded.signatures["sample"](support=support + 2.0, seed=tf.constant([1, 2]))
        # A second export is a new version.
        main.run_modes("export", config, workdir, helpers.DATA_DIR)
        self.assertTrue((workdir / "export" / "iwae" / "2" / "saved_model.pb").exists())

    def test_mixed_bfloat16_runs_end_to_end(self):
        config = helpers.tiny_config("iwae")
        config.precision = "mixed_bfloat16"
        workdir = pathlib.Path(self.create_tempdir())
        with precision.policy_scope(config.precision):
            main.run_modes("all", config, workdir, helpers.DATA_DIR)
        result = json.loads((workdir / "eval.json").read_text())
        self.assertEqual(result["precision"], "mixed_bfloat16")
        rows = result["per_shot"]
        self.assertTrue(all(np.isfinite(row["log_prob"]) and row["log_prob"] < 0 for row in rows))
        loaded = tf.saved_model.load(str(workdir / "export" / "iwae" / "1"))
        probs = loaded.signatures["sample"](support=tf.zeros([1, 2, 28, 28, 1]), seed=tf.constant([0, 0]))["probs"]
        self.assertEqual(probs.dtype, tf.float32)

    def test_conditional_model_eval_has_classification(self):
        config = helpers.tiny_config("statistician")
        workdir = pathlib.Path(self.create_tempdir())
        main.run_modes("train", config, workdir, helpers.DATA_DIR)
        config.eval.joint_num_samples = -1
        with self.assertRaisesRegex(errors.ConfigError, "joint_num_samples must be >= 0"):
            main.run_modes("eval", config, workdir, helpers.DATA_DIR)
        self.assertFalse((workdir / "eval.json").exists())
        config.eval.joint_num_samples = config.eval.num_samples + 3
        main.run_modes("eval", config, workdir, helpers.DATA_DIR)
        result = json.loads((workdir / "eval.json").read_text())
        self.assertIn("sampled from q(c | x_<t) jointly with z", result["estimator"])
        joint = result["joint_set"]
        self.assertEqual(joint["set_size"], 5)
        self.assertEqual(joint["num_samples"], config.eval.num_samples + 3)
        self.assertTrue(np.isfinite(joint["log_prob_per_item"]) and joint["log_prob_per_item"] < 0)
        self.assertGreater(joint["stderr"], 0)
        error_rates = result["classification"]
        for key in (
            "lake_20way_1shot_error",
            "lake_20way_1shot_kl_error",
            "random_5way_1shot_likelihood_error",
            "mnist_10way_1shot_kl_error",
        ):
            self.assertBetween(error_rates[key], 0.0, 1.0)
        self.assertNotIn("skipped", error_rates)

    def test_missing_optional_data_skips_only_its_tasks(self):
        # A data folder with Omniglot but neither MNIST nor Lake's runs: --mode=all
        # trains, evaluates (per-shot table and random tasks), samples and exports.
        data = pathlib.Path(self.create_tempdir())
        (data / "omniglot").mkdir()
        (data / "omniglot" / "gmn_28x28").symlink_to(helpers.OMNIGLOT_DIR / "gmn_28x28")
        config = helpers.tiny_config("statistician")
        workdir = pathlib.Path(self.create_tempdir())
        with self.assertLogs(level="WARNING") as logs:
            main.run_modes("all", config, workdir, data)
        result = json.loads((workdir / "eval.json").read_text())
        self.assertLen(result["per_shot"], 10)
        error_rates = result["classification"]
        self.assertBetween(error_rates["random_5way_1shot_kl_error"], 0.0, 1.0)
        self.assertNotIn("lake_20way_1shot_error", error_rates)
        self.assertEqual(sorted(error_rates["skipped"]), ["lake_20way_1shot", "mnist_10way_1shot", "mnist_10way_5shot"])
        self.assertIn("all_runs.zip not found", error_rates["skipped"]["lake_20way_1shot"])
        self.assertIn("binarized_mnist_test.npz not found", error_rates["skipped"]["mnist_10way_5shot"])
        warnings = "\n".join(logs.output)
        self.assertIn("Skipping the MNIST transfer tasks", warnings)
        self.assertIn("Skipping Lake's 20 one-shot runs", warnings)
        self.assertTrue((workdir / "export" / "statistician" / "1" / "saved_model.pb").exists())

    def test_rerun_resumes_from_the_checkpoint(self):
        config = helpers.tiny_config("vae")
        workdir = self.create_tempdir().full_path
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 2)
        config.train.steps = 5
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 5)
        self.assertIn(5, _checkpoint_steps(workdir))
        # Already there: nothing more to do.
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 5)

    def test_resume_uses_the_configured_learning_rate(self):
        config = helpers.tiny_config("vae")
        config.train.schedule = "constant"
        workdir = self.create_tempdir().full_path
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        config.train.steps = 3
        config.train.learning_rate = 1e-5
        made = []
        make_optimizer = train.make_optimizer
        with mock.patch.object(train, "make_optimizer", lambda c: made.append(make_optimizer(c)) or made[-1]):
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        (optimizer,) = made
        # The checkpoint holds 1e-3 (the learning rate is an optimizer variable).
        self.assertAllClose(float(optimizer.learning_rate.numpy()), 1e-5)

    def test_constant_run_resumes_into_a_cosine_tail_and_back(self):
        config = helpers.tiny_config("vae")
        config.train.schedule = "constant"
        workdir = pathlib.Path(self.create_tempdir().full_path)
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        constant_prefix = tf.train.latest_checkpoint(workdir / "checkpoints")
        saved_moment = tf.train.load_variable(constant_prefix, "optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE")
        config.train.schedule, config.train.steps, config.train.decay_start = "cosine_tail", 4, 2
        tail = train.Trainer(config)
        self.assertEqual(tail.restore([constant_prefix]), constant_prefix)
        # The constant run's variables are [steps, rate, moments...]; the tail's [steps, moments...].
        self.assertEqual(int(tail.optimizer.iterations.numpy()), 2)
        self.assertAllEqual(tail.optimizer.variables[1].numpy(), saved_moment)
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 4)
        tail_prefix = tf.train.latest_checkpoint(workdir / "checkpoints")
        self.assertEqual(tf.train.load_variable(tail_prefix, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"), 4)
        # And back: a constant rate resumes from the tail's checkpoint at its configured rate.
        config.train.schedule, config.train.learning_rate = "constant", 1e-4
        constant = train.Trainer(config)
        self.assertEqual(constant.restore([tail_prefix]), tail_prefix)
        self.assertEqual(int(constant.optimizer.iterations.numpy()), 4)
        self.assertAllEqual(
            constant.optimizer.variables[2].numpy(),
            tf.train.load_variable(tail_prefix, "optimizer/_variables/1/.ATTRIBUTES/VARIABLE_VALUE"),
        )
        self.assertAllClose(float(constant.optimizer.learning_rate.numpy()), 1e-4)

    def test_best_validation_checkpoint_survives_resume(self):
        config = helpers.tiny_config("vae")
        config.train.steps = 4
        config.train.eval_every = 1
        workdir = self.create_tempdir().full_path
        # Scripted validation bounds: steps 1-4, then 5-6 after resuming.
        bounds = [-5.0, -3.0, -4.0, -6.0, -3.5, -2.0]
        with mock.patch.object(train.evaluate, "mean_bound", side_effect=bounds):
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
            self.assertEqual(workdir_lib.restore_model(config, workdir, "best")[1], 2)
            self.assertEqual(workdir_lib.restore_model(config, workdir, "latest")[1], 4)
            config.train.steps = 5
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
            # -3.5 at step 5 is worse than step 2's -3.0, remembered across the resume.
            self.assertEqual(workdir_lib.restore_model(config, workdir, "best")[1], 2)
            config.train.steps = 6
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
            self.assertEqual(workdir_lib.restore_model(config, workdir, "best")[1], 6)
        self.assertEqual(workdir_lib.find_checkpoint(workdir, "best")[1], "best")
        with self.assertRaisesRegex(errors.ConfigError, "valid: best, latest"):
            workdir_lib.find_checkpoint(workdir, "newest")

    def test_best_checkpoint_falls_back_to_latest_without_validation(self):
        config = helpers.tiny_config("vae")
        config.train.eval_every = 0
        workdir = self.create_tempdir().full_path
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        prefix, kind = workdir_lib.find_checkpoint(workdir, "best")
        self.assertEqual((pathlib.Path(prefix).name, kind), ("ckpt-2", "latest"))
        main.run_modes("eval", config, workdir, helpers.DATA_DIR)
        result = json.loads(pathlib.Path(workdir, "eval.json").read_text())
        self.assertEqual((result["checkpoint"], result["checkpoint_step"]), ("latest", 2))
        with self.assertRaisesRegex(FileNotFoundError, "run --mode=train first"):
            workdir_lib.find_checkpoint(self.create_tempdir().full_path, "best")

    def test_train_steps_report_the_gradient_norm_before_clipping(self):
        config = helpers.tiny_config("vae")
        config.train.learning_rate = 0.0  # Weights stay put, so the gradient can be recomputed.
        config.train.grad_clip_norm = 1e-3
        trainer = train.Trainer(config)
        batch = helpers.random_images([2, 1, 28, 28, 1])
        iterator = iter(tf.data.Dataset.from_tensors({"images": batch}).repeat())
        loss, norm, skipped = trainer.train(iterator, 1)
        self.assertEqual(skipped, 0.0)

        seed = tf.random.experimental.stateless_fold_in(tf.constant([config.seed, 0]), 0)
        with tf.GradientTape() as tape:
            expected_loss = -tf.reduce_sum(trainer.model.elbo(batch, seed, training=True)) / 2
        expected_norm = tf.linalg.global_norm(tape.gradient(expected_loss, trainer.model.trainable_variables))
        self.assertAllClose(loss, expected_loss, rtol=1e-5)
        self.assertAllClose(norm, expected_norm, rtol=1e-4)
        self.assertGreater(norm, 1e-3)

    def test_clipping_bounds_the_applied_update(self):
        for clip in ("grad_clip_norm", "grad_clip_value"):
            config = helpers.tiny_config("vae")
            config.train.learning_rate = 1.0
            setattr(config.train, clip, 1e-6)
            # Adam's first update is lr * g / (|g| + eps): with eps = 1e-3 >> |g| the
            # step is ~ g / eps, so clipping the gradient shrinks the step by as much.
            config.train.adam_epsilon = 1e-3
            trainer = train.Trainer(config)
            before = [v.numpy() for v in trainer.model.trainable_variables]
            batch = helpers.random_images([2, 1, 28, 28, 1])
            trainer.train(iter(tf.data.Dataset.from_tensors({"images": batch}).repeat()), 1)
            largest = max(
                float(np.max(np.abs(v.numpy() - b))) for v, b in zip(trainer.model.trainable_variables, before)
            )
            self.assertLess(largest, 2e-3, clip)
            self.assertGreater(largest, 0.0, clip)

    def test_weighted_objective_reports_the_bound_and_follows_the_weighted_gradient(self):
        config = helpers.tiny_config("statistician")
        config.train.learning_rate = 0.0
        config.train.likelihood_weight_period = 300  # Step 0: w = 2.
        trainer = train.Trainer(config)
        items = config.data.batch_size * config.data.set_size
        batch = helpers.random_images([config.data.batch_size, config.data.set_size, 28, 28, 1])
        loss, norm, _ = trainer.train(iter(tf.data.Dataset.from_tensors({"images": batch}).repeat()), 1)

        seed = tf.random.experimental.stateless_fold_in(tf.constant([config.seed, 0]), 0)
        with tf.GradientTape(persistent=True) as tape:
            log_likelihood, kl = trainer.model.elbo_terms(batch, seed, training=True)
            bound_loss = -tf.reduce_sum(log_likelihood - kl) / items
            weighted = -tf.reduce_sum(2.0 * log_likelihood - kl / 2.0) / items
        self.assertAllClose(loss, bound_loss, rtol=1e-5)
        weighted_norm = tf.linalg.global_norm(tape.gradient(weighted, trainer.model.trainable_variables))
        plain_norm = tf.linalg.global_norm(tape.gradient(bound_loss, trainer.model.trainable_variables))
        self.assertAllClose(norm, weighted_norm, rtol=1e-4)
        self.assertNotAllClose(norm, plain_norm, rtol=1e-2)

    def test_prefix_sets_add_the_bound_of_each_sets_first_items(self):
        config = helpers.tiny_config("hfsgm")
        config.train.learning_rate = 0.0
        config.train.likelihood_weight_period = 0  # The plain bound's gradient.
        config.train.prefix_set_sizes = (1, 2)
        trainer = train.Trainer(config)
        batch = helpers.random_images([config.data.batch_size, config.data.set_size, 28, 28, 1])
        loss, norm, _ = trainer.train(iter(tf.data.Dataset.from_tensors({"images": batch}).repeat()), 1)

        seed = tf.random.experimental.stateless_fold_in(tf.constant([config.seed, 0]), 0)
        items = config.data.batch_size * (config.data.set_size + 1 + 2)
        with tf.GradientTape() as tape:
            bounds = [
                trainer.model.elbo(batch, seed, training=True),
                trainer.model.elbo(batch[:, :1], tf.random.experimental.stateless_fold_in(seed, 1), training=True),
                trainer.model.elbo(batch[:, :2], tf.random.experimental.stateless_fold_in(seed, 2), training=True),
            ]
            expected_loss = -tf.add_n([tf.reduce_sum(b) for b in bounds]) / items
        expected_norm = tf.linalg.global_norm(tape.gradient(expected_loss, trainer.model.trainable_variables))
        self.assertAllClose(loss, expected_loss, rtol=1e-5)
        self.assertAllClose(norm, expected_norm, rtol=1e-4)
        full_sets_only = -tf.reduce_sum(bounds[0]) / (config.data.batch_size * config.data.set_size)
        self.assertNotAllClose(loss, full_sets_only, rtol=1e-3)

        for sizes in [(0,), (config.data.set_size,)]:
            config.train.prefix_set_sizes = sizes
            with self.assertRaisesRegex(errors.ConfigError, r"train.prefix_set_sizes .* must be in \[1, "):
                train.Trainer(config)

    def test_validation_tasks_log_the_accuracy_of_the_validated_weights(self):
        config = helpers.tiny_config("statistician")
        config.train.val_tasks = ((2, 1), (3, 2))
        config.train.val_task_queries = 30
        config.train.learning_rate = 0.1  # Two steps that take the weights far from their average.
        workdir = pathlib.Path(self.create_tempdir())
        with self.assertLogs(logger="absl", level="INFO") as logs:
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        self.assertTrue(any("2way_1shot_kl accuracy" in line for line in logs.output))

        curve = plots.read_curve(workdir)
        self.assertEqual(sorted(curve["accuracy"]), ["2way_1shot_kl", "3way_2shot_kl"])
        # The validated weights (the weight average of the best checkpoint, step 2)
        # classify the same validation episodes with the same rule.
        restored = workdir_lib.restore_model(config, workdir, "best")
        self.assertEqual((restored.step, restored.weights), (2, "average"))
        splits = omniglot.load_configured_splits(config.data, helpers.DATA_DIR, config.seed)
        tasks = train.validation_tasks(config, splits["val"], restored.model)
        self.assertEqual([(rule, task["labels"].size) for rule, task in tasks.values()], [("kl", 30), ("kl", 30)])
        config.train.ema_decay = 0.0
        trained = workdir_lib.restore_model(config, workdir, "best").model
        logged, of_average, of_trained = [], [], []
        for name, (_, task) in tasks.items():
            self.assertEqual(curve["accuracy"][name]["step"], [2])
            logged += curve["accuracy"][name]["value"]
            of_average.append(1 - classify.error_rate(restored.model, task, "kl"))
            of_trained.append(1 - classify.error_rate(trained, task, "kl"))
        self.assertAllClose(logged, of_average, atol=1e-6)
        self.assertNotAllClose(logged, of_trained)  # So the check above tells the two apart.
        figure = plots.learning_curve_figure(curve, workdir / "curve.png")
        width = tf.io.decode_png(figure.read_bytes()).shape[1]
        without_accuracy = plots.learning_curve_figure(dict(curve, accuracy={}), workdir / "curve2.png")
        self.assertGreater(width, tf.io.decode_png(without_accuracy.read_bytes()).shape[1])  # A third panel.

    def test_validation_tasks_config_errors_come_before_any_step(self):
        model = helpers.tiny_model("statistician")
        splits = omniglot.load_configured_splits(helpers.tiny_config("statistician").data, helpers.DATA_DIR, 0)
        num_val = len(splits["val"])
        for tasks, queries, message in [
            (((1, 1),), 10, r"a pair \(ways >= 2, shots >= 1\), got \(1, 1\)"),
            (((5,),), 10, r"a pair .*got \(5,\)"),
            (((num_val + 1, 1),), 10_000, f"need {num_val + 1} validation characters; there are {num_val}"),
            (((5, 1),), 4, "val_task_queries 4 is fewer than the 5 ways"),
        ]:
            config = helpers.tiny_config("statistician")
            config.train.val_tasks, config.train.val_task_queries = tasks, queries
            with self.assertRaisesRegex(errors.ConfigError, message):
                train.validation_tasks(config, splits["val"], model)
        config = helpers.tiny_config("vae")
        config.train.val_tasks = ((5, 1),)
        workdir = pathlib.Path(self.create_tempdir())
        with self.assertRaisesRegex(errors.ConfigError, "vae has no classification rule"):
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        self.assertEqual(_checkpoint_steps(workdir), [])

    def test_likelihood_weight_schedule_and_its_config_checks(self):
        weights = [float(train.likelihood_weight(tf.constant(s, tf.int64), 300)) for s in (0, 299, 300, 600, 3000)]
        self.assertAllClose(weights, [2.0, 2.0, 1.5, 1.25, 1 + 0.5**10])
        config = helpers.tiny_config("seqgen")
        config.train.likelihood_weight_period = 300
        with self.assertRaisesRegex(errors.ConfigError, "likelihood_weight_period needs a model that splits"):
            train.Trainer(config)
        config = helpers.tiny_config("gmn")  # It splits its bound: the weighting is accepted.
        config.train.likelihood_weight_period = 300
        self.assertTrue(train.Trainer(config).model.separable_elbo)
        config.train.likelihood_weight_period = 0
        config.train.grad_clip_norm, config.train.grad_clip_value = 1.0, 0.5
        with self.assertRaisesRegex(errors.ConfigError, "at most one of train.grad_clip_norm"):
            train.Trainer(config)

    def test_turns_on_a_rotated_split_are_a_config_error(self):
        characters = omniglot.CharacterSet(("A/character01/rot000",), np.zeros([1, 20, 28, 28], np.uint8))
        for split in ("vinyals", "random"):
            with self.subTest(split):
                config = helpers.tiny_config("gmn")  # Turns and flips on.
                config.data.split = split
                with self.assertRaisesRegex(
                    errors.ConfigError, f"the {split} split's .* already include every rotation"
                ):
                    train.training_data(config, characters)
                config.data.augment_turns = False
                augmented, _ = train.training_data(config, characters)
                self.assertEqual(augmented.names, ("A/character01/rot000/rot000", "A/character01/rot000/rot000/flip"))

    def test_same_seed_same_run(self):
        results = []
        for seed in (0, 0, 1):
            config = helpers.tiny_config("iwae")
            config.seed = seed
            config.train.steps = 3
            workdir = self.create_tempdir().full_path
            main.run_modes("train", config, workdir, helpers.DATA_DIR)
            main.run_modes("eval", config, workdir, helpers.DATA_DIR)
            results.append(json.loads(pathlib.Path(workdir, "eval.json").read_text())["per_shot"])
        self.assertEqual(results[0], results[1])
        self.assertNotEqual(results[0], results[2])

    def _train_with_nan_batches(self, workdir, nan_steps, steps):
        """Trains tiny vae for `steps`, the batches at 0-based `nan_steps` all NaN."""
        config = helpers.tiny_config("vae")
        config.train.steps = steps
        config.train.max_bad_steps = 3
        config.train.checkpoint_every_secs = 0  # A checkpoint after every inner loop.
        real_training_data = train.training_data

        def with_nans(config, characters, start=0):
            characters, dataset = real_training_data(config, characters, start)
            index = tf.data.Dataset.range(start, 1 << 40)

            def poison(i, batch):
                bad = tf.reduce_any(tf.equal(i, tf.constant(nan_steps or [-1], tf.int64)))
                return {**batch, "images": tf.where(bad, np.nan, batch["images"])}

            return characters, tf.data.Dataset.zip(index, dataset).map(poison)

        with mock.patch.object(train, "training_data", with_nans):
            return train.train_and_evaluate(config, workdir, helpers.DATA_DIR)

    def test_non_finite_steps_are_skipped_and_never_saved(self):
        workdir = self.create_tempdir().full_path
        with self.assertLogs(level="WARNING") as logs:
            self.assertEqual(self._train_with_nan_batches(workdir, [1], 4), 4)
        self.assertIn("steps 2-2: skipped 1 with a non-finite loss or gradient (1 in this run)", "\n".join(logs.output))
        config = helpers.tiny_config("vae")
        model = workdir_lib.restore_model(config, workdir, "latest").model
        self.assertTrue(all(np.all(np.isfinite(v.numpy())) for v in model.variables))

    def test_a_run_of_non_finite_steps_restores_then_stops(self):
        workdir = self.create_tempdir().full_path
        self._train_with_nan_batches(workdir, [], 2)  # Good checkpoint at step 2.
        config = helpers.tiny_config("vae")
        good = [v.numpy() for v in workdir_lib.restore_model(config, workdir, "latest").model.variables]
        with self.assertRaisesRegex(FloatingPointError, r"3 steps in a row .* again after restoring .*ckpt-"):
            self._train_with_nan_batches(workdir, [2, 3, 4, 5, 6, 7, 8], 8)
        # Checkpoints written meanwhile hold the good weights: nothing non-finite was applied.
        for value, expected in zip(workdir_lib.restore_model(config, workdir, "latest").model.variables, good):
            self.assertAllEqual(value, expected)

    def test_a_corrupt_checkpoint_falls_back_to_the_one_before(self):
        config = helpers.tiny_config("vae")
        config.train.checkpoint_every_secs = 0
        config.train.steps = 3
        workdir = pathlib.Path(self.create_tempdir())
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        self.assertEqual(_checkpoint_steps(workdir), [1, 2, 3])
        data = next((workdir / "checkpoints").glob("ckpt-3.data-*"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # Truncated.
        with self.assertLogs(level="WARNING") as logs:
            restored = workdir_lib.restore_model(config, workdir, "latest")
        self.assertEqual(restored.step, 2)
        self.assertIn("ckpt-3 is unreadable", "\n".join(logs.output))
        config.train.steps = 4  # Training resumes from step 2 too.
        with self.assertLogs(level="WARNING"):
            self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 4)
        # ckpt-3 (rewritten by the resumed run) cut again, the others removed: nothing to fall back to.
        data = next((workdir / "checkpoints").glob("ckpt-3.data-*"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        for prefix in ("ckpt-2", "ckpt-4"):
            for file in (workdir / "checkpoints").glob(prefix + ".*"):
                file.unlink()
        with self.assertRaisesRegex(errors.CheckpointError, "no readable checkpoint: .*ckpt-3"):
            workdir_lib.restore_model(config, workdir, "latest")

    def test_a_failed_save_says_so_and_keeps_the_previous_checkpoint(self):
        config = helpers.tiny_config("vae")
        workdir = pathlib.Path(self.create_tempdir())
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        config.train.steps = 4
        full = OSError(28, "No space left on device")
        with mock.patch.object(tf.train.CheckpointManager, "save", side_effect=full):
            with self.assertRaisesRegex(errors.CheckpointError, r"No space left on device.*ckpt-2, is intact"):
                train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        self.assertEqual(workdir_lib.restore_model(config, workdir, "latest").step, 2)

    def test_learning_rate_schedules(self):
        config = helpers.tiny_config("iwae")
        config.train.steps = 3280
        schedule = train.make_schedule(config.train)
        self.assertAllClose(float(schedule(0)), 1e-3)
        self.assertAllClose(float(schedule(3279)), 1e-3 * 10 ** (-1.0), rtol=1e-5)
        config.train.warmup_steps = 100
        warm = train.make_schedule(config.train)
        self.assertAllClose(float(warm(0)), 0.01 * float(schedule(0)))  # (step + 1) / 100 of the schedule.
        self.assertAllClose(float(warm(49)), 0.5 * float(schedule(49)))
        self.assertAllClose(float(warm(3279)), float(schedule(3279)))
        config.train.schedule = "constant"
        self.assertAllClose([float(train.make_schedule(config.train)(s)) for s in (9, 99, 500)], [1e-4, 1e-3, 1e-3])
        config.train.warmup_steps = -1
        with self.assertRaisesRegex(errors.ConfigError, "warmup_steps must be >= 0"):
            train.make_schedule(config.train)
        config.train.warmup_steps = 0
        config.train.schedule, config.train.steps, config.train.decay_start = "cosine_tail", 3000, 1000
        tail = train.make_schedule(config.train)
        self.assertAllClose([float(tail(s)) for s in (0, 999, 1000, 2000, 3000, 4000)], [1e-3] * 3 + [5e-4, 0.0, 0.0])
        config.train.decay_start = 3000
        with self.assertRaisesRegex(errors.ConfigError, r"decay_start must be in \[0, train.steps = 3000\)"):
            train.make_schedule(config.train)
        config.train.schedule = "linear"
        with self.assertRaisesRegex(errors.ConfigError, "valid: constant, cosine, cosine_tail, exponential, burda"):
            train.make_schedule(config.train)

    def test_remaining_time_ignores_one_stretched_loop(self):
        remaining = train.RemainingTime(window=5)
        self.assertEqual(remaining.seconds(100), float("inf"))
        for seconds in (2.0, 2.2, 3600.0, 1.8, 2.0):  # 20 steps a loop; one loop paused for an hour.
            remaining.add(20, seconds)
        self.assertAllClose(remaining.seconds(1000), 1000 * 0.1)
        for _ in range(5):  # The machine slows down: the window follows it.
            remaining.add(20, 4.0)
        self.assertAllClose(remaining.seconds(1000), 1000 * 0.2)


class CommandLineTest(tf.test.TestCase):
    def test_sigterm_saves_and_rerun_continues(self):
        workdir = self.create_tempdir().full_path
        common = [
            "--model=vae",
            "--config=configs/vae.py:tiny",
            "--config.data.source=gmn28",
            "--config.train.steps_per_loop=5",
            "--config.train.eval_every=0",
            f"--workdir={workdir}",
            "--mode=train",
        ]
        process = helpers.run_main(*common, "--config.train.steps=1000000")
        lines = []
        deadline = time.time() + 240
        for line in process.stdout:
            lines.append(line)
            if "step 10/" in line or time.time() > deadline:
                break
        # A second run on the busy workdir stops at once, naming the first, and changes nothing there.
        second = helpers.run_main(*common, "--config.train.steps=20")
        busy = second.communicate(timeout=240)[0]
        self.assertEqual(second.returncode, 1, busy)
        self.assertIn(f"error: process {process.pid} on ", busy)
        self.assertIn(f"is training in {workdir}: wait for it to exit", busy)
        self.assertEqual(json.loads(pathlib.Path(workdir, "config.json").read_text())["train"]["steps"], 1000000)
        process.send_signal(signal.SIGTERM)
        output = "".join(lines) + process.communicate(timeout=120)[0]
        self.assertEqual(process.returncode, 128 + signal.SIGTERM, output)
        self.assertIn("checkpoint saved, run again to resume", output)
        saved = max(_checkpoint_steps(workdir))
        self.assertGreaterEqual(saved, 10)

        process = helpers.run_main(*common, f"--config.train.steps={saved + 5}")
        output = process.communicate(timeout=240)[0]
        self.assertEqual(process.returncode, 0, output)
        self.assertIn(f"at step {saved}", output)
        self.assertIn(f"Trained to step {saved + 5}", output)

    def test_bad_flags_give_clear_errors(self):
        cases = [
            (["--model=gan"], "one of <" + "|".join(sorted(models.MODELS)) + ">"),
            (["--model=vae", "--mode=serve"], "one of <train|eval|sample|export|all|score>"),
            (
                ["--model=vae", "--data_dir=/nonexistent/omniglot"],
                "data directory /nonexistent/omniglot does not exist",
            ),
            (["--model=vae", "--config=configs/iwae.py:tiny"], "--model=vae but the config is for 'iwae'"),
            (["--model=vae", "--config=configs/vae.py:huge"], "unknown config variant 'huge'"),
            (["--model=vae", "--config=configs/vae.py:tiny", "--config.train.stepz=3"], "stepz"),
            (["--model=vae", "--mode=eval", "--workdir=/nonexistent/run"], "no checkpoint in /nonexistent/run"),
            (
                ["--model=vae", "--config=configs/vae.py:tiny", "--config.export.weights_dtype=int8"],
                "config.export.weights_dtype must be one of float32, float16, bfloat16, got 'int8'",
            ),
        ]
        processes = [(helpers.run_main(*args), expected) for args, expected in cases]
        for process, expected in processes:
            output = process.communicate(timeout=240)[0]
            self.assertNotEqual(process.returncode, 0, output)
            self.assertIn(expected, output)


class TrainingLockTest(absltest.TestCase):
    def test_one_holder_at_a_time_and_free_as_soon_as_its_run_ends(self):
        workdir = pathlib.Path(self.create_tempdir().full_path)
        with workdir_lib.training_lock(workdir):
            with self.assertRaisesRegex(errors.WorkdirBusyError, rf"process {os.getpid()} on .* is training in"):
                with workdir_lib.training_lock(workdir):
                    pass
        # A run that ends by an exception (as a signal's Interrupted does) frees the workdir
        # at once, while its process lives on.
        with self.assertRaises(train.Interrupted):
            with workdir_lib.training_lock(workdir):
                raise train.Interrupted(10, signal.SIGTERM)
        with workdir_lib.training_lock(workdir):
            pass


if __name__ == "__main__":
    absltest.main()
