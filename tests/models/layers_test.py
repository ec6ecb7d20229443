"""The shared building blocks that have their own numerics."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from oneshot_tf import precision
from oneshot_tf.models import layers


class BatchNormTest(tf.test.TestCase, parameterized.TestCase):
    """The fused BatchNorm must compute what keras.layers.BatchNormalization computes."""

    @parameterized.parameters([(16, 5, 5, 8)], [(40, 8)])
    def test_matches_keras_batch_norm(self, shape):
        x = tf.random.stateless_normal(shape, [1, 2]) * 3.0 + 1.5
        ours, theirs = layers.BatchNorm(), keras.layers.BatchNormalization()
        ours.build(x.shape)
        theirs.build(x.shape)
        gamma = tf.random.stateless_uniform(shape[-1:], [3, 4], 0.5, 2.0)
        for layer in (ours, theirs):
            layer.gamma.assign(gamma)
            layer.beta.assign(-gamma)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y_ours = ours(x, training=True)
            y_theirs = theirs(x, training=True)
            loss_ours = tf.reduce_sum(tf.sin(y_ours))
            loss_theirs = tf.reduce_sum(tf.sin(y_theirs))
        self.assertAllClose(y_ours, y_theirs, atol=1e-4)
        self.assertAllClose(tape.gradient(loss_ours, x), tape.gradient(loss_theirs, x), atol=1e-4)
        self.assertAllClose(
            tape.gradient(loss_ours, ours.gamma), tape.gradient(loss_theirs, theirs.gamma), rtol=1e-4, atol=1e-3
        )
        # Moving statistics: same mean; the fused op's variance is Bessel-corrected.
        n = np.prod(shape[:-1])
        self.assertAllClose(ours.moving_mean, theirs.moving_mean, atol=1e-5)
        expected_var = 0.99 + 0.01 * (theirs.moving_variance - 0.99) / 0.01 * n / (n - 1)
        self.assertAllClose(ours.moving_variance, expected_var, rtol=1e-4)
        # Inference uses the moving statistics the same way.
        ours.moving_variance.assign(theirs.moving_variance)
        self.assertAllClose(ours(x, training=False), theirs(x, training=False), rtol=1e-4, atol=1e-4)

    def test_any_rank_and_bfloat16(self):
        norm = layers.BatchNorm(dtype="mixed_bfloat16")
        for shape in ([6, 4, 8], [3, 6, 4, 8], [24, 8]):
            x = tf.random.stateless_normal(shape, [5, 6]) * 4.0 + 2.0
            y = norm(x, training=True)
            self.assertEqual(y.dtype, tf.bfloat16)
            self.assertEqual(y.shape, shape)
            flat = tf.reshape(tf.cast(y, tf.float32), [-1, 8])
            self.assertAllClose(tf.reduce_mean(flat, 0), tf.zeros([8]), atol=0.05)
            self.assertAllClose(tf.math.reduce_std(flat, 0), tf.ones([8]), atol=0.05)
        self.assertEqual(norm.gamma.dtype, "float32")


class OutputLayersTest(tf.test.TestCase):
    """Under mixed_bfloat16, distribution parameters are computed in float32."""

    def test_normal_head_parameters_have_float32_precision(self):
        with precision.policy_scope("mixed_bfloat16"):
            head = layers.NormalHead(4)
        features = tf.random.stateless_normal([64, 32], [1, 1])
        loc = head(tf.cast(features, tf.bfloat16)).mean()
        kernel, bias = head.dense.kernel, head.dense.bias
        # A bfloat16 input is exact in float32; only the matmul's precision is at stake.
        inputs = tf.cast(tf.cast(features, tf.bfloat16), tf.float32)
        expected = (inputs @ kernel + bias)[:, :4]
        self.assertAllClose(loc, expected, rtol=1e-5, atol=1e-5)


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

    def test_masks(self):
        self.assertAllEqual(layers.causal_mask(3), [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
        self.assertAllEqual(layers.full_mask(3), [[1, 1, 1]])


class ConvStacksTest(tf.test.TestCase):
    def test_conv_blocks_shapes(self):
        features = layers.ConvEncoder((8, 8, 8))(tf.zeros([2, 28, 28, 1]))
        self.assertEqual(features.shape, (2, 4 * 4 * 8))
        self.assertEqual(layers.UpConvDecoder((8, 8, 8), 1)(tf.zeros([2, 5])).shape, (2, 28, 28, 1))

    def test_encoder_map_shape_and_decoder_from_maps(self):
        encoder = layers.ConvEncoder((8, 8, 6))
        maps = tf.reshape(
            encoder(tf.cast(tf.random.stateless_uniform([2, 28, 28, 1], [0, 1]) < 0.2, tf.float32)),
            [2, *encoder.output_map_shape],
        )
        self.assertEqual(encoder.output_map_shape, (4, 4, 6))
        decoder = layers.UpConvDecoder((6, 8, 8), 1, dense_stem=False)
        self.assertEqual(decoder(maps).shape, (2, 28, 28, 1))
        self.assertFalse(any(isinstance(layer, keras.layers.Dense) for layer in decoder.net.chain))

    def test_decoder_logits_have_float32_precision(self):
        with precision.policy_scope("mixed_bfloat16"):
            decoder = layers.UpConvDecoder((8, 8, 8), convs_per_stage=1)
        logits = decoder(tf.random.stateless_normal([2, 10], [2, 2]))
        self.assertEqual(logits.dtype, tf.float32)
        # bfloat16 keeps 8 significant bits: float32 logits are not all on its grid.
        rounded = tf.cast(tf.cast(logits, tf.bfloat16), tf.float32)
        self.assertGreater(float(tf.reduce_mean(tf.cast(tf.not_equal(logits, rounded), tf.float32))), 0.5)
