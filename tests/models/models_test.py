"""Interface tests run on every registered model (tiny configs)."""

import importlib

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from oneshot_tf import models
from oneshot_tf.models import layers
from tests import helpers


def _build(name):
    config = importlib.import_module(f"configs.{name}").get_config("tiny")
    return models.get_model(config.model, **config.model_kwargs.to_dict())


class ModelsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*sorted(models.MODELS))
    def test_shapes_and_finiteness(self, name):
        model = _build(name)
        seed = tf.constant([1, 2])
        for shots in (0, 1, 3, 10):
            support, query = helpers.random_images([2, shots, 28, 28, 1]), helpers.random_images([2, 28, 28, 1], 1)
            log_prob = model.log_prob(support, query, 3, seed)
            self.assertEqual(log_prob.shape, (2,))
            self.assertTrue(np.all(np.isfinite(log_prob)) and np.all(log_prob < 0))
            probs, images = model.sample(support, seed)
            self.assertEqual(probs.shape, (2, 28, 28, 1))
            self.assertEqual(images.shape, (2, 28, 28, 1))
            self.assertTrue(np.all((probs >= 0) & (probs <= 1)))
            self.assertEqual(set(np.unique(images).tolist()) - {0.0, 1.0}, set())
        self.assertEqual(model.elbo(helpers.random_images([3, 4, 28, 28, 1]), seed, training=True).shape, (3,))
        self.assertEqual(model.per_shot_log_weights(helpers.random_images([2, 5, 28, 28, 1]), 6, seed).shape, (6, 2, 5))

    @parameterized.parameters(*sorted(models.MODELS))
    def test_mixed_bfloat16_keeps_probabilities_in_float32(self, name):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            model = _build(name)
            seed = tf.constant([1, 2])
            support, query = helpers.random_images([2, 3, 28, 28, 1]), helpers.random_images([2, 28, 28, 1], 1)
            with tf.GradientTape() as tape:
                elbo = model.elbo(helpers.random_images([2, 3, 28, 28, 1]), seed, training=True)
            gradients = tape.gradient(elbo, model.trainable_variables)
            log_prob = model.log_prob(support, query, 3, seed)
            probs, _ = model.sample(support, seed)
            per_shot = model.per_shot_log_weights(helpers.random_images([2, 4, 28, 28, 1]), 2, seed)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        for value in (elbo, log_prob, probs, per_shot):
            self.assertEqual(value.dtype, tf.float32)
            self.assertTrue(np.all(np.isfinite(value)))
        self.assertTrue(all(v.dtype == tf.float32 for v in model.trainable_variables))
        self.assertTrue(all(g is None or np.all(np.isfinite(g)) for g in gradients))

    @parameterized.parameters(*sorted(models.MODELS))
    def test_seed_determines_samples(self, name):
        model = _build(name)
        support = helpers.random_images([2, 3, 28, 28, 1])
        a = model.sample(support, tf.constant([5, 6]))
        b = model.sample(support, tf.constant([5, 6]))
        c = model.sample(support, tf.constant([5, 7]))
        self.assertAllEqual(a[0], b[0])
        self.assertAllEqual(a[1], b[1])
        self.assertNotAllEqual(a[0], c[0])

    @parameterized.parameters(*sorted(models.MODELS))
    def test_bad_shapes_raise(self, name):
        model = _build(name)
        seed = tf.constant([0, 0])
        with self.assertRaisesRegex(ValueError, r"support must have shape \[batch, shots, 28, 28, 1\]"):
            model.log_prob(helpers.random_images([2, 28, 28, 1]), helpers.random_images([2, 28, 28, 1]), 2, seed)
        with self.assertRaisesRegex(ValueError, r"query must have shape \[batch, 28, 28, 1\]"):
            model.log_prob(helpers.random_images([2, 1, 28, 28, 1]), helpers.random_images([2, 32, 32, 1]), 2, seed)
        with self.assertRaisesRegex(ValueError, "batch must have shape"):
            model.elbo(helpers.random_images([2, 28, 28, 1]), seed)

    def test_unknown_model(self):
        with self.assertRaisesRegex(ValueError, "valid: " + ", ".join(sorted(models.MODELS))):
            models.get_model("gan")

    def test_all_tested(self):
        # The tests above run on each model's `tiny` config; every model has one, and a `quick`.
        for name in models.MODELS:
            module = importlib.import_module(f"configs.{name}")
            for variant in ("tiny", "quick", "default"):
                self.assertEqual(module.get_config(variant).model, name)


class LayersTest(tf.test.TestCase):
    def test_distribution_shapes(self):
        likelihood = layers.bernoulli_images(tf.zeros([3, 5, 28, 28, 1], tf.bfloat16))
        self.assertEqual(likelihood.event_shape, (28, 28, 1))
        self.assertEqual(likelihood.batch_shape, (3, 5))
        self.assertEqual(likelihood.log_prob(tf.zeros([28, 28, 1])).dtype, tf.float32)
        posterior = layers.NormalHead(4)(tf.zeros([3, 5, 7]))
        self.assertEqual(posterior.event_shape, (4,))
        self.assertEqual(posterior.batch_shape, (3, 5))

    def test_batch_apply_matches_a_loop(self):
        dense = keras.layers.Dense(3)
        x = tf.random.normal([4, 5, 6])
        merged = layers.batch_apply(dense, x)
        self.assertEqual(merged.shape, (4, 5, 3))
        self.assertAllClose(merged[2], dense(x[2]))

    def test_log_mean_exp(self):
        weights = tf.constant([[0.0, 1000.0], [np.log(3.0), 1000.0]])
        self.assertAllClose(layers.log_mean_exp(weights, axis=0), [np.log(2.0), 1000.0])

    def test_conv_blocks_shapes(self):
        features = layers.ConvEncoder((8, 8, 8))(tf.zeros([2, 28, 28, 1]))
        self.assertEqual(features.shape, (2, 4 * 4 * 8))
        self.assertEqual(layers.ConvDecoder((8, 8, 8))(tf.zeros([2, 5])).shape, (2, 28, 28, 1))


if __name__ == "__main__":
    absltest.main()
