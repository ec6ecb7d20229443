"""Hierarchical few-shot model specifics: the joint weights against the bound, t = 1, order."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf.models import layers
from tests import helpers


class HierarchicalFewShotModelTest(tf.test.TestCase):
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

    def test_top_context_posterior_ignores_set_order(self):
        model = helpers.tiny_model("hfsgm")
        sets = helpers.random_images([3, 6, 28, 28, 1])
        permuted = tf.gather(sets, [4, 2, 0, 5, 1, 3], axis=1)
        a, b = model.context_posterior(sets), model.context_posterior(permuted)
        self.assertEqual(a.batch_shape, (3,))
        self.assertAllClose(a.mean(), b.mean(), atol=1e-5)
        self.assertAllClose(a.stddev(), b.stddev(), atol=1e-5)
        self.assertNotAllClose(a.mean(), model.context_posterior(sets[:, :3]).mean())

    def test_dynamic_shots_in_graph_mode_match_eager(self):
        model = helpers.tiny_model("hfsgm")
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


if __name__ == "__main__":
    absltest.main()
