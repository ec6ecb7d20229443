"""Interface tests run on every registered model (tiny configs)."""

import pathlib

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from oneshot_tf import configs, errors, models, precision
from tests import helpers

_build = helpers.tiny_model


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
        with precision.policy_scope("mixed_bfloat16"):
            model = _build(name)
            seed = tf.constant([1, 2])
            support, query = helpers.random_images([2, 3, 28, 28, 1]), helpers.random_images([2, 28, 28, 1], 1)
            with tf.GradientTape() as tape:
                elbo = model.elbo(helpers.random_images([2, 3, 28, 28, 1]), seed, training=True)
            gradients = tape.gradient(elbo, model.trainable_variables)
            log_prob = model.log_prob(support, query, 3, seed)
            probs, _ = model.sample(support, seed)
            per_shot = model.per_shot_log_weights(helpers.random_images([2, 4, 28, 28, 1]), 2, seed)
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

    @parameterized.parameters(*sorted(models.MODELS))
    def test_declared_abilities_match_the_code(self, name):
        model = _build(name)
        overrides = type(model).per_shot_log_weights is not models.base.FewShotModel.per_shot_log_weights
        self.assertEqual(model.one_pass_scoring, overrides)
        splits = type(model).elbo_terms is not models.base.FewShotModel.elbo_terms
        self.assertEqual(model.separable_elbo, splits)
        self.assertEqual(bool(model.classification_rules), model.conditional)
        self.assertLessEqual(set(model.classification_rules), {"likelihood", "kl"})
        self.assertEqual("kl" in model.classification_rules, hasattr(model, "context_posterior"))

    def test_unknown_model_and_bad_kwargs_are_config_errors(self):
        with self.assertRaisesRegex(errors.ConfigError, "valid: " + ", ".join(sorted(models.MODELS))):
            models.get_model("gan")
        with self.assertRaisesRegex(errors.ConfigError, "model_kwargs of gmn: unknown architecture"):
            models.get_model("gmn", architecture="mlp")

    def test_all_tested(self):
        # The tests above run on each model's `tiny` config; every model has one, and a
        # `quick`, and a test file of its own (iwae is the vae class with another config).
        tests_dir = pathlib.Path(__file__).parent
        for name, cls in models.MODELS.items():
            for variant in ("tiny", "quick", "default"):
                self.assertEqual(configs.get_config(name, variant).model, name)
            module = cls.__module__.rsplit(".", 1)[-1]
            self.assertTrue((tests_dir / f"{module}_test.py").exists(), f"{name}: no tests/models/{module}_test.py")


if __name__ == "__main__":
    absltest.main()
