"""Neural Statistician specifics: order-free context, one-pass prefixes, joint set weights."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl.testing import absltest

from oneshot_tf.models import layers, statistician
from tests import helpers

tfd = tfp.distributions


class StatisticianTest(tf.test.TestCase):
    def test_context_posterior_ignores_set_order(self):
        model = helpers.tiny_model("statistician")
        sets = helpers.random_images([3, 6, 28, 28, 1])
        permuted = tf.gather(sets, [4, 2, 0, 5, 1, 3], axis=1)
        a, b = model.context_posterior(sets), model.context_posterior(permuted)
        self.assertEqual(a.batch_shape, (3,))
        self.assertAllClose(a.mean(), b.mean(), atol=1e-5)
        self.assertAllClose(a.stddev(), b.stddev(), atol=1e-5)
        self.assertNotAllClose(a.mean(), model.context_posterior(sets[:, :3]).mean())

    def test_one_pass_prefixes_equal_separate_posteriors(self):
        model = helpers.tiny_model("statistician")
        episodes = helpers.random_images([2, 5, 28, 28, 1])
        prefixes, _ = model.prefix_context_posteriors(episodes)
        self.assertEqual(prefixes.batch_shape, (2, 5))
        # t = 1 conditions on nothing: the prior N(0, I).
        self.assertAllClose(prefixes.mean()[:, 0], tf.zeros([2, 4]))
        self.assertAllClose(prefixes.stddev()[:, 0], tf.ones([2, 4]))
        for t in range(1, 5):
            separate = model.context_posterior(episodes[:, :t])
            self.assertAllClose(prefixes.mean()[:, t], separate.mean(), atol=1e-5)
            self.assertAllClose(prefixes.stddev()[:, t], separate.stddev(), atol=1e-5)

    def test_elbo_terms_are_the_likelihood_and_the_kl(self):
        model = helpers.tiny_model("statistician")
        sets = helpers.random_images([3, 4, 28, 28, 1])
        seed = tf.constant([3, 4])
        log_likelihood, kl = model.elbo_terms(sets, seed)
        self.assertAllClose(model.elbo(sets, seed), log_likelihood - kl)
        # Bernoulli log-likelihoods of binary images are below 0; a KL averaged over
        # its own samples is positive (single-sample terms need not be, so average).
        self.assertAllLess(log_likelihood, 0.0)
        kls = [model.elbo_terms(sets, tf.constant([s, 0]))[1] for s in range(20)]
        self.assertGreater(float(tf.reduce_mean(kls)), 0.0)
        self.assertEqual(log_likelihood.shape, (3,))

    def test_one_sample_set_weight_is_the_bound_with_a_sampled_context_kl(self):
        # With K = 1 and the bound's seed, the set's log-weight draws the same c and z as
        # the bound; it differs from it only in taking log q(c | X) - log p(c) at that c
        # in place of KL(q(c | X) || p(c)).
        model = helpers.tiny_model("statistician")
        sets = helpers.random_images([3, 4, 28, 28, 1])
        seed = tf.constant([5, 6])
        log_likelihood, kl = model.elbo_terms(sets, seed)
        q_c = model.context_posterior(sets)
        context = q_c.sample(seed=tf.random.experimental.stateless_split(seed, 2)[0])
        prior = layers.standard_normal(model.context_size)
        expected = log_likelihood - kl + tfd.kl_divergence(q_c, prior) + prior.log_prob(context) - q_c.log_prob(context)
        weights = model.set_log_weights(sets, 1, seed)
        self.assertEqual(weights.shape, (1, 3))
        self.assertAllClose(weights[0], expected, rtol=1e-5)

    def test_set_weights_draw_a_context_per_sample(self):
        model = helpers.tiny_model("statistician")
        sets = helpers.random_images([2, 3, 28, 28, 1])
        weights = model.set_log_weights(sets, 6, tf.constant([1, 2]))
        self.assertEqual(weights.shape, (6, 2))
        self.assertTrue(np.all(np.isfinite(weights)))
        # One c (and z) per sample: K distinct weights; another seed, other weights.
        self.assertLen(np.unique(weights.numpy()[:, 0]), 6)
        self.assertNotAllClose(model.set_log_weights(sets, 6, tf.constant([1, 3])), weights)

    def test_latent_kl_by_layer_is_in_expectation_the_bounds_kl_of_z(self):
        model = helpers.tiny_model("statistician", num_latent_layers=2)
        sets = helpers.random_images([3, 4, 28, 28, 1])
        for s in range(30):  # Batch-norm statistics of these sets, not the initial 0 and 1.
            model.elbo(sets, tf.constant([s, 9]), training=True)
        kl_by_layer, elbo_terms = tf.function(model.latent_kl_by_layer), tf.function(model.elbo_terms)
        by_layer = tf.stack([kl_by_layer(sets, tf.constant([s, 1])) for s in range(200)])
        self.assertEqual(by_layer.shape, (200, 3, 4, 2))
        self.assertAllGreaterEqual(by_layer, 0.0)
        # The bound's KL of z is a one-sample estimate of the sum over layers and items:
        # the two means over seeds agree within their standard errors.
        kl_c = tfd.kl_divergence(model.context_posterior(sets), layers.standard_normal(model.context_size))
        kl_z = tf.stack([elbo_terms(sets, tf.constant([s, 2]))[1] - kl_c for s in range(200)])
        summed = tf.reduce_sum(by_layer, [2, 3])
        stderr = tf.sqrt((tf.math.reduce_variance(kl_z, 0) + tf.math.reduce_variance(summed, 0)) / 200)
        self.assertAllLess(tf.abs(tf.reduce_mean(kl_z, 0) - tf.reduce_mean(summed, 0)) / stderr, 4.0)

    def test_normalized_log_variance_head(self):
        model = helpers.tiny_model("statistician", gaussian_head="normalized_log_variance")
        sets = helpers.random_images([3, 4, 28, 28, 1])
        self.assertEqual(model.elbo(sets, tf.constant([1, 2]), training=True).shape, (3,))
        # In training the head's batch norm makes the 2 x context_size outputs of the
        # batch zero-mean, unit-variance together (gamma 1, beta 0 at the start).
        head = model.statistic.head
        q_c = model.context_posterior(sets, training=True)
        params = tf.concat([q_c.mean(), 2.0 * tf.math.log(q_c.stddev())], axis=-1)
        self.assertAllClose(tf.reduce_mean(params), 0.0, atol=1e-4)
        self.assertAllClose(tf.math.reduce_std(params), 1.0, atol=1e-2)
        self.assertIsInstance(head, statistician.NormalizedLogVarianceHead)
        with self.assertRaisesRegex(Exception, "unknown gaussian_head 'tanh'"):
            helpers.tiny_model("statistician", gaussian_head="tanh")

    def test_batch_norm_momentum_reaches_every_block(self):
        model = helpers.tiny_model("statistician", batch_norm_momentum=0.95)
        model.elbo(helpers.random_images([2, 3, 28, 28, 1]), tf.constant([1, 1]))
        every_layer = list(model._flatten_layers())
        head_norms = [layer.norm for layer in every_layer if isinstance(layer, statistician.NormalizedLogVarianceHead)]
        self.assertNotEmpty(head_norms)
        momenta = {
            layer.momentum
            for layer in every_layer
            if isinstance(layer, layers.BatchNorm) and all(layer is not norm for norm in head_norms)
        }
        self.assertEqual(momenta, {0.95})
        # The public implementation's heads keep their own momentum (its bn_params: 0.01).
        self.assertEqual({norm.momentum for norm in head_norms}, {0.99})
        self.assertEqual(layers.BatchNorm().momentum, 0.99)  # Only inside the model.

    def test_kernel_initializer_reaches_every_dense_and_conv(self):
        def kernel_variance_ratios(name):
            model = helpers.tiny_model("statistician", kernel_initializer=name)
            model.elbo(helpers.random_images([2, 3, 28, 28, 1]), tf.constant([1, 1]))
            ratios = {}
            for v in model.trainable_variables:
                if v.path.endswith("kernel") and "transpose" not in v.path:
                    fan_in, fan_out = np.prod(v.shape[:-1]), v.shape[-1] * np.prod(v.shape[:-2])
                    ratios[v.path] = float(np.var(v.numpy())) / (2.0 / (fan_in + fan_out))
            return ratios

        keras_default, public = (
            kernel_variance_ratios("glorot_uniform"),
            kernel_variance_ratios("xavier_normal_relu_gain"),
        )
        self.assertGreater(len(public), 10)
        # Glorot: Var = 2 / (fan_in + fan_out); the public implementation's: twice that.
        self.assertAllClose(np.median(list(keras_default.values())), 1.0, rtol=0.3)
        self.assertAllClose(np.median(list(public.values())), 2.0, rtol=0.3)

    def test_hidden_batch_norm_false_is_the_public_layout(self):
        def batch_norms(model):
            model.elbo(helpers.random_images([2, 3, 28, 28, 1]), tf.constant([1, 1]), training=True)
            return [layer for layer in model._flatten_layers() if isinstance(layer, layers.BatchNorm)]

        ours = helpers.tiny_model("statistician", num_latent_layers=2, hidden_batch_norm=True)
        public = helpers.tiny_model("statistician", num_latent_layers=2, hidden_batch_norm=False)
        # One per z network (2 layers x posterior and prior), the decoder's input and
        # the decoder's dense stem: 6 fewer; the stem's dense layer gets a bias instead.
        self.assertLen(batch_norms(ours), len(batch_norms(public)) + 6)
        self.assertIsInstance(ours.decoder.net.chain[0], keras.layers.Dense)
        self.assertIsNone(ours.decoder.net.chain[0].bias)
        self.assertIsNotNone(public.decoder.net.chain[0].bias)
        self.assertIsInstance(public.decoder.net.chain[1], keras.layers.Reshape)
        # The z networks' first nonlinearity is ELU of the summed projections alone.
        prior = public.priors[0]
        context = tf.random.normal([4, 4])
        hidden = tf.nn.elu(prior.projections[0](context))
        expected = prior.head(prior.residual(hidden, training=False), training=False)
        self.assertAllClose(prior([context]).mean(), expected.mean())

    def test_zero_shots_use_the_prior_in_graph_mode_too(self):
        model = helpers.tiny_model("statistician")
        sample = tf.function(
            model.sample, input_signature=[tf.TensorSpec([None, None, 28, 28, 1]), tf.TensorSpec([2], tf.int32)]
        )
        probs, _ = sample(tf.zeros([2, 0, 28, 28, 1]), tf.constant([1, 1]))
        eager, _ = model.sample(tf.zeros([2, 0, 28, 28, 1]), tf.constant([1, 1]))
        self.assertAllClose(probs, eager)


if __name__ == "__main__":
    absltest.main()
