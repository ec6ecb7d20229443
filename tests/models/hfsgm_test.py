"""Hierarchical few-shot model specifics: the joint weights against the bound, t = 1, order."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from oneshot_tf.models import hfsgm, layers
from tests import helpers


class HierarchicalFewShotModelTest(tf.test.TestCase, parameterized.TestCase):
    def test_joint_weights_average_to_the_bound(self):
        # E_q[log p(X, c, Z) - log q(c, Z | X)] is the bound, whose KLs elbo_terms computes
        # in closed form: a context or latent layer left out of either side, or a sign
        # wrong, moves one mean away from the other by that layer's KL (hundreds of nats
        # here). Two layers, so the context prior p(c_1 | c_2, Z_2) takes part.
        # Momentum 0: one training call on 64 sets sets the batch norms' statistics to
        # the data's, so the untrained heads give moderate scales.
        model = helpers.tiny_model("hfsgm", num_layers=2, batch_norm_momentum=0.0)
        model.elbo(helpers.random_images([64, 3, 28, 28, 1], seed=9), tf.constant([0, 1]), training=True)
        sets = helpers.random_images([2, 3, 28, 28, 1], seed=4)
        weights = model.set_log_weights(sets, 20000, tf.constant([3, 4])).numpy().astype(np.float64)  # [K, 2]
        # Copies of the sets in one batch draw independent latents (inference-mode norms).
        copies = tf.repeat(sets, 1000, axis=0)
        bounds = np.concatenate([model.elbo(copies, tf.constant([5, i])).numpy() for i in range(10)])
        bounds = bounds.reshape(10, 2, 1000).transpose(1, 0, 2).reshape(2, -1).T.astype(np.float64)  # [10000, 2]
        kl = model.elbo_terms(sets, tf.constant([0, 0]))[1].numpy()
        self.assertTrue(np.all(kl > 100.0), kl)  # So a missing KL would show.
        difference = np.abs(weights.mean(0) - bounds.mean(0))
        tolerance = 4 * np.sqrt(weights.var(0) / len(weights) + bounds.var(0) / len(bounds))
        self.assertTrue(np.all(difference < tolerance), (difference, tolerance, kl))
        # ... and K samples give a tighter bound than one.
        self.assertTrue(np.all(layers.log_mean_exp(weights, axis=0).numpy() > weights.mean(0)))

    def test_first_shot_is_the_joint_estimate_of_a_set_of_one(self):
        model = helpers.tiny_model("hfsgm")
        query = helpers.random_images([2, 28, 28, 1], seed=1)
        seed = tf.constant([7, 8])
        self.assertAllClose(
            model.log_weights(tf.zeros([2, 0, 28, 28, 1]), query, 5, seed),
            model.set_log_weights(query[:, None], 5, seed),
        )

    def test_the_support_conditions_scores_and_samples(self):
        model = helpers.tiny_model("hfsgm")
        seed = tf.constant([1, 1])
        query = helpers.random_images([2, 28, 28, 1], seed=1)
        a, b = helpers.random_images([2, 3, 28, 28, 1], seed=2), helpers.random_images([2, 3, 28, 28, 1], seed=3)
        self.assertNotAllClose(model.log_weights(a, query, 4, seed), model.log_weights(b, query, 4, seed))
        self.assertNotAllClose(model.sample_probs(a, seed), model.sample_probs(b, seed))

    def test_attentive_pool_is_attention_from_the_mean(self):
        pool = hfsgm.AttentivePool(8, heads=2)
        items = tf.random.stateless_normal([3, 2, 5, 4, 4, 8], [0, 1])  # [K, batch, T, 4, 4, width]
        pooled = pool(items).numpy()
        self.assertEqual(pooled.shape, (3, 2, 4, 4, 8))

        def project(layer, x):
            return x @ layer.kernel.numpy() + layer.bias.numpy()

        x = items.numpy().astype(np.float64)
        query = project(pool.query, x.mean(axis=2)).reshape(3, 2, 4, 4, 2, 4)
        keys = project(pool.key, x).reshape(3, 2, 5, 4, 4, 2, 4)
        values = project(pool.value, x).reshape(3, 2, 5, 4, 4, 2, 4)
        similarity = np.einsum("kbhwnd,kbthwnd->kbnt", query, keys) / np.sqrt(4 * 4 * 4)
        weights = np.exp(similarity - similarity.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        expected = np.einsum("kbnt,kbthwnd->kbhwnd", weights, values).reshape(3, 2, 4, 4, 8)
        self.assertAllClose(pooled, expected, atol=1e-4)
        self.assertAllClose(pool(tf.gather(items, [3, 0, 4, 1, 2], axis=2)), pooled, atol=1e-5)
        same = tf.repeat(items[:, :, :1], 5, axis=2)  # Equal items weigh the same: their value.
        self.assertAllClose(pool(same), project(pool.value, same.numpy()[:, :, 0]), atol=1e-4)

    @parameterized.parameters("mean", "attention")
    def test_top_context_posterior_ignores_set_order(self, aggregation):
        model = helpers.tiny_model("hfsgm", context_aggregation=aggregation)
        sets = helpers.random_images([3, 6, 28, 28, 1])
        permuted = tf.gather(sets, [4, 2, 0, 5, 1, 3], axis=1)
        a, b = model.context_posterior(sets), model.context_posterior(permuted)
        self.assertEqual(a.batch_shape, (3,))
        self.assertAllClose(a.mean(), b.mean(), atol=1e-5)
        self.assertAllClose(a.stddev(), b.stddev(), atol=1e-5)
        self.assertNotAllClose(a.mean(), model.context_posterior(sets[:, :3]).mean())

    @parameterized.parameters("mean", "attention")
    def test_dynamic_shots_in_graph_mode_match_eager(self, aggregation):
        model = helpers.tiny_model("hfsgm", context_aggregation=aggregation)
        spec = [tf.TensorSpec([None, None, 28, 28, 1]), tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([2], tf.int32)]
        log_prob = tf.function(lambda s, q, seed: model.log_prob(s, q, 3, seed), input_signature=spec)
        sample = tf.function(model.sample_probs, input_signature=[spec[0], spec[2]])
        query, seed = helpers.random_images([2, 28, 28, 1], seed=1), tf.constant([1, 2])
        for shots in (0, 2):
            support = helpers.random_images([2, shots, 28, 28, 1], seed=2)
            self.assertAllClose(log_prob(support, query, seed), model.log_prob(support, query, 3, seed), atol=1e-4)
            self.assertAllClose(sample(support, seed), model.sample_probs(support, seed), atol=1e-5)

    def test_encoder_must_end_at_four_by_four(self):
        with self.assertRaisesRegex(ValueError, "4 x 4"):
            helpers.tiny_model("hfsgm", encoder_channels=(4, 4))
        with self.assertRaisesRegex(ValueError, "aggregation must be one of mean, attention, got 'max'"):
            helpers.tiny_model("hfsgm", context_aggregation="max")


if __name__ == "__main__":
    absltest.main()
