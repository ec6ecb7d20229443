"""GMN specifics: order-free attention, causal mask, pseudo-input, batched = naive."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from oneshot_tf.models import gmn
from tests import helpers


class GmnTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("attention", "mean")
    def test_prior_ignores_support_order(self, conditioning):
        model = helpers.tiny_model("gmn", conditioning=conditioning)
        support = helpers.random_images([3, 6, 28, 28, 1])
        permuted = tf.gather(support, [5, 3, 1, 0, 2, 4], axis=1)
        a, b = model.prior(support), model.prior(permuted)
        self.assertAllClose(a.mean(), b.mean(), atol=1e-5)
        self.assertAllClose(a.stddev(), b.stddev(), atol=1e-5)
        self.assertNotAllClose(a.mean(), model.prior(support[:, :2]).mean())

    def test_position_never_sees_later_items(self):
        model = helpers.tiny_model("gmn")
        episodes = helpers.random_images([2, 6, 28, 28, 1])
        changed = tf.concat([episodes[:, :4], helpers.random_images([2, 2, 28, 28, 1], seed=7)], axis=1)
        seed = tf.constant([3, 4])
        a = model.per_shot_log_weights(episodes, 5, seed)
        b = model.per_shot_log_weights(changed, 5, seed)
        self.assertAllEqual(a[:, :, :4], b[:, :, :4])
        self.assertNotAllClose(a[:, :, 4:], b[:, :, 4:])

    def test_zero_shots_condition_on_the_pseudo_input(self):
        model = helpers.tiny_model("gmn")
        empty = tf.zeros([2, 0, 28, 28, 1])
        before = model.prior(empty).mean()
        model.pseudo_input.assign(model.pseudo_input + 1.0)
        self.assertNotAllClose(before, model.prior(empty).mean())
        log_prob = model.log_prob(empty, helpers.random_images([2, 28, 28, 1]), 4, tf.constant([0, 0]))
        self.assertTrue(tf.reduce_all(tf.math.is_finite(log_prob)))

    @parameterized.parameters("attention", "mean")
    def test_batched_causal_pass_equals_naive_loop(self, conditioning):
        model = helpers.tiny_model("gmn", conditioning=conditioning)
        episodes = helpers.random_images([2, 5, 28, 28, 1])
        z = tf.random.stateless_normal([3, 2, 5, 3], [1, 2])  # [K, B, T, latent]
        batched = model._causal_terms(episodes, lambda q: z, training=False)
        for t in range(5):
            naive = model._set_terms(episodes[:, :t], episodes[:, t], lambda q, t=t: z[:, :, t : t + 1])
            self.assertAllClose(batched[:, :, t], naive, atol=1e-4, msg=f"t={t}")

    @parameterized.parameters(1, 2)
    def test_per_set_matmul_equals_einsum(self, sets):
        for leading in ((), (3,), (2, 3)):
            x = tf.random.stateless_normal([*leading, sets, 4, 5], [1, sets])
            y = tf.random.stateless_normal([sets, 5, 6], [2, sets])
            expected = np.einsum("...bqi,bio->...bqo", x.numpy(), y.numpy())
            self.assertAllClose(gmn._per_set_matmul(x, y), expected, atol=1e-5, msg=str(leading))
            y_t = tf.transpose(y, [0, 2, 1])
            self.assertAllClose(gmn._per_set_matmul(x, y_t, transpose_y=True), expected, atol=1e-5)

    def test_elbo_terms_are_the_likelihood_and_the_sampled_kl(self):
        model = helpers.tiny_model("gmn")
        episodes = helpers.random_images([3, 5, 28, 28, 1])
        seed = tf.constant([3, 4])
        log_likelihood, kl = model.elbo_terms(episodes, seed)
        self.assertEqual(log_likelihood.shape, (3,))
        self.assertAllClose(model.elbo(episodes, seed), log_likelihood - kl, atol=1e-3)
        self.assertAllLess(log_likelihood, 0.0)
        # Averaged over its own samples, log q - log p estimates KL(q || p) >= 0.
        kls = [model.elbo_terms(episodes, tf.constant([s, 0]))[1] for s in range(20)]
        self.assertGreater(float(tf.reduce_mean(kls)), 0.0)

    def test_one_episode_scores_as_in_a_batch(self):
        # One episode (B = 1) with K samples in a graph: oneDNN's broadcasting batch
        # matmul crashed here; the episode's log-weights must equal its row of a batch.
        model = helpers.tiny_model("gmn")
        episodes = helpers.random_images([2, 4, 28, 28, 1])
        z = tf.random.stateless_normal([6, 2, 4, 3], [3, 4])
        terms = tf.function(lambda x, z: model._causal_terms(x, lambda q: z, training=False))
        batched = terms(episodes, z)
        for b in range(2):
            self.assertAllClose(terms(episodes[b : b + 1], z[:, b : b + 1]), batched[:, b : b + 1], atol=1e-5)


if __name__ == "__main__":
    absltest.main()
