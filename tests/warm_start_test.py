"""train.init_from: a training run that starts from an export's weights."""

import json
import pathlib

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from oneshot_tf import errors, export, models, train, warm_start
from oneshot_tf import workdir as workdir_lib
from tests import helpers


def _built(config):
    return models.build_model(config.model, **config.model_kwargs.to_dict())


def _values(model) -> list:
    return [np.array(v.numpy()) for v in model.variables]


class WarmStartTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.config = helpers.tiny_config("statistician")
        tf.random.set_seed(1)
        self.source = _built(self.config)
        self.root = pathlib.Path(self.create_tempdir().full_path)

    def _export(self, weights_dtype="float32") -> pathlib.Path:
        return export.export_model(self.source, self.root, "statistician", weights_dtype)

    def test_initialise_copies_every_variable_from_the_newest_version(self):
        self._export()
        for v in self.source.variables:  # The second version holds other weights.
            v.assign(v + 0.25 if tf.as_dtype(v.dtype).is_floating else v)
        newest = self._export()
        tf.random.set_seed(2)
        target = _built(self.config)
        self.assertNotAllClose(_values(target)[0], _values(self.source)[0])
        self.assertEqual(warm_start.initialise(target, self.root / "statistician"), newest)
        for got, want in zip(_values(target), _values(self.source)):
            self.assertAllEqual(got, want)

    def test_half_precision_weights_are_cast_up(self):
        folder = self._export("float16")
        target = _built(self.config)
        warm_start.initialise(target, folder)
        for got, want in zip(target.variables, self.source.variables):
            self.assertEqual(got.dtype, want.dtype)
            self.assertAllEqual(got.numpy(), tf.cast(tf.cast(want, tf.float16), want.dtype).numpy())

    def test_another_model_is_a_config_error_and_nothing_is_assigned(self):
        folder = self._export()
        other = self.config.copy_and_resolve_references()
        other.model_kwargs.context_size += 1
        target = _built(other)
        before = _values(target)
        with self.assertRaisesRegex(errors.ConfigError, "shape .* same model and model_kwargs"):
            warm_start.initialise(target, folder)
        for got, want in zip(_values(target), before):
            self.assertAllEqual(got, want)
        with self.assertRaisesRegex(errors.ConfigError, "holds .* variables"):
            warm_start.initialise(_built(helpers.tiny_config("vae")), folder)

    def test_a_path_without_a_saved_model_is_a_config_error(self):
        with self.assertRaisesRegex(errors.ConfigError, "neither a SavedModel folder nor a model base path"):
            warm_start.initialise(_built(self.config), self.root / "nothing")

    def test_the_steps_of_a_shipped_model_come_from_the_eval_json_beside_its_versions(self):
        folder = self._export()
        self.assertIsNone(warm_start.trained_steps(folder))
        (folder.parent / "eval.json").write_text(json.dumps({"checkpoint_step": 7}))
        self.assertEqual(warm_start.trained_steps(folder), 7)
        (folder.parent / "eval.json").write_text(json.dumps({"checkpoint_step": 7, "trained_steps": 40}))
        self.assertEqual(warm_start.trained_steps(folder), 40)

    def test_a_version_folder_on_its_own_knows_its_steps_and_model_kwargs(self):
        trained = self.config.copy_and_resolve_references()
        trained.model_kwargs.context_size += 1
        training = {"trained_steps": 40, "model_kwargs": trained.model_kwargs.to_dict()}
        folder = export.export_model(_built(trained), self.root, "statistician", "float32", training)
        (folder.parent / "eval.json").write_text(json.dumps({"trained_steps": 7}))  # The record comes first.
        alone = pathlib.Path(self.create_tempdir().full_path) / "copied"
        folder.rename(alone)
        self.assertEqual(warm_start.trained_steps(alone), 40)
        with self.assertRaisesRegex(
            errors.ConfigError, rf"training.json has context_size={trained.model_kwargs.context_size} \(here"
        ):
            warm_start.initialise(_built(self.config), alone, self.config.model_kwargs.to_dict())

    def test_a_run_from_an_export_of_unknown_steps_says_so_and_counts_its_own(self):
        config = self.config.copy_and_resolve_references()
        config.train.init_from = str(self._export())  # No eval.json beside it.
        config.train.steps = 2
        workdir = self.create_tempdir().full_path
        with self.assertLogs(level="WARNING") as logs:
            train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        self.assertIn("was trained for are unknown (no assets.extra/training.json in it", "\n".join(logs.output))
        self.assertEqual(workdir_lib.steps_before(workdir), 0)

    def test_a_new_run_starts_from_the_export_and_a_resumed_one_ignores_it(self):
        config = self.config.copy_and_resolve_references()
        folder = self._export()
        (folder.parent / "eval.json").write_text(json.dumps({"checkpoint_step": 7, "trained_steps": 40}))
        config.train.init_from = str(folder)
        config.train.learning_rate = 0.0  # The trained weights stay the exported ones.
        config.train.ema_decay = 0.5
        config.train.steps = 2
        workdir = self.create_tempdir().full_path
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 2)
        self.assertEqual(workdir_lib.steps_before(workdir), 40)  # eval.json counts them from here
        self.assertEqual(workdir_lib.steps_before(self.create_tempdir().full_path), 0)
        source_kernels = [v.numpy() for v in self.source.trainable_variables]
        for average in (False, True):
            config.train.ema_decay = 0.5 if average else 0.0
            restored = workdir_lib.restore_model(config, workdir, "latest").model
            for got, want in zip(restored.trainable_variables, source_kernels):
                self.assertAllClose(got.numpy(), want)
        config.train.init_from = str(self.root / "nothing")  # Resuming never reads it.
        config.train.steps = 3
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 3)


class EveryModelTest(parameterized.TestCase, tf.test.TestCase):
    @parameterized.named_parameters(*[(name, name) for name in sorted(models.MODELS)])
    def test_an_export_starts_the_same_model_with_its_weights(self, name):
        config = helpers.tiny_config(name)
        tf.random.set_seed(4)
        source = _built(config)
        folder = export.export_model(source, self.create_tempdir().full_path, name, "float32")
        tf.random.set_seed(5)
        target = _built(config)
        warm_start.initialise(target, folder)
        for got, want in zip(_values(target), _values(source)):
            self.assertAllEqual(got, want)


class AttentionFromMeanTest(tf.test.TestCase):
    """A SCHA-VAE (hfsgm with context_aggregation="attention") from an export of the
    hfsgm that pools by the mean."""

    def setUp(self):
        super().setUp()
        self.mean_config = helpers.tiny_config("hfsgm")
        self.attention_config = self.mean_config.copy_and_resolve_references()
        self.attention_config.model_kwargs.context_aggregation = "attention"
        tf.random.set_seed(3)
        self.source = _built(self.mean_config)
        root = pathlib.Path(self.create_tempdir().full_path)
        self.folder = export.export_model(self.source, root, "hfsgm", "float32")
        self.batch = helpers.random_images([3, 4, 28, 28, 1], seed=4)
        self.seed = tf.constant([7, 8])

    def test_starts_as_the_same_function_and_its_attention_learns(self):
        target = _built(self.attention_config)
        self.assertNotAllClose(target.elbo(self.batch, self.seed), self.source.elbo(self.batch, self.seed))
        warm_start.initialise(target, self.folder)
        additions = target.warm_start_additions()
        self.assertLen(additions, self.mean_config.model_kwargs.num_layers)
        self.assertAllClose(target.elbo(self.batch, self.seed), self.source.elbo(self.batch, self.seed))
        self.assertAllClose(
            target.set_log_weights(self.batch, 2, self.seed), self.source.set_log_weights(self.batch, 2, self.seed)
        )
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(target.elbo(self.batch, self.seed, training=True))
        key_gradients = tape.gradient(loss, [layer.key.kernel for layer in additions])
        for gradient in key_gradients:  # Zero keys would stay zero if their gradient were.
            self.assertGreater(float(tf.reduce_max(tf.abs(gradient))), 0.0)

    def test_a_mean_model_does_not_start_from_a_scha_vae_export(self):
        attention_model = _built(self.attention_config)
        folder = export.export_model(attention_model, pathlib.Path(self.create_tempdir().full_path), "hfsgm", "float32")
        target = _built(self.mean_config)
        before = _values(target)
        with self.assertRaisesRegex(errors.ConfigError, "holds .* variables"):
            warm_start.initialise(target, folder)
        (folder.parent / "config.json").write_text(
            json.dumps({"model_kwargs": self.attention_config.model_kwargs.to_dict()})
        )
        with self.assertRaisesRegex(
            errors.ConfigError, r"config.json has context_aggregation='attention' \(here 'mean'\)$"
        ):
            warm_start.initialise(target, folder, self.mean_config.model_kwargs.to_dict())
        for got, want in zip(_values(target), before):
            self.assertAllEqual(got, want)


class DeeperStatisticianTest(tf.test.TestCase):
    """A statistician with three layers of z from an export of a one-layer one."""

    def setUp(self):
        super().setUp()
        self.shallow_config = helpers.tiny_config("statistician")
        self.deep_config = self.shallow_config.copy_and_resolve_references()
        self.deep_config.model_kwargs.num_latent_layers = 3
        tf.random.set_seed(5)
        self.source = _built(self.shallow_config)
        root = pathlib.Path(self.create_tempdir().full_path)
        self.folder = export.export_model(self.source, root, "statistician", "float32")

    def test_the_decoder_starts_blind_to_the_new_layers_and_learns_to_read_them(self):
        target = _built(self.deep_config)
        warm_start.initialise(target, self.folder)
        latent_size = self.shallow_config.model_kwargs.latent_size
        kernel = target.decoder_z.kernel
        self.assertAllEqual(kernel[:latent_size], self.source.decoder_z.kernel)
        self.assertAllEqual(kernel[latent_size:], tf.zeros_like(kernel[latent_size:]))
        for got, want in zip(target.posteriors[0].variables, self.source.posteriors[0].variables):
            self.assertAllEqual(got, want)
        context = tf.random.stateless_normal([2, 4, self.shallow_config.model_kwargs.context_size], [1, 2])
        z_1 = tf.random.stateless_normal([2, 4, latent_size], [3, 4])
        deeper = tf.random.stateless_normal([2, 4, 2 * latent_size], [5, 6])  # Any z_2, z_3.
        images = helpers.random_images([2, 4, 28, 28, 1], seed=6)
        self.assertAllClose(
            target._likelihood(tf.concat([z_1, deeper], -1), context, False).log_prob(images),
            self.source._likelihood(z_1, context, False).log_prob(images),
        )
        batch = helpers.random_images([3, 5, 28, 28, 1], seed=7)
        seed = tf.constant([1, 2])  # Layer 1 carries what the export's only layer did.
        self.assertAllClose(
            target.latent_kl_by_layer(batch, seed)[..., 0], self.source.latent_kl_by_layer(batch, seed)[..., 0]
        )
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(target.elbo(batch, tf.constant([7, 8]), training=True))
        rows = tape.gradient(loss, kernel)[latent_size:]  # Zero rows would stay zero if this were.
        self.assertGreater(float(tf.reduce_max(tf.abs(rows))), 0.0)

    def test_other_depths_and_sizes_still_do_not_start_it(self):
        two_layers = self.shallow_config.copy_and_resolve_references()
        two_layers.model_kwargs.num_latent_layers = 2
        root = pathlib.Path(self.create_tempdir().full_path)
        folder = export.export_model(_built(two_layers), root, "statistician", "float32")
        target = _built(self.deep_config)
        before = _values(target)
        with self.assertRaisesRegex(errors.ConfigError, "holds .* variables"):
            warm_start.initialise(target, folder)
        wider = self.deep_config.copy_and_resolve_references()
        wider.model_kwargs.latent_size += 1
        with self.assertRaisesRegex(errors.ConfigError, "shape .* same model and model_kwargs"):
            warm_start.initialise(_built(wider), self.folder)
        with self.assertRaisesRegex(errors.ConfigError, "holds .* variables"):
            warm_start.initialise(self.source, folder)  # Nor a deeper export a shallower model.
        for got, want in zip(_values(target), before):
            self.assertAllEqual(got, want)
