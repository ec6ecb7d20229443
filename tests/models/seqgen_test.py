"""Sequential generative model specifics: spatial transformer, support reads, gradients."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf.models import spatial_transformer
from tests import helpers


class SpatialTransformerTest(tf.test.TestCase):
    def test_write_then_read_returns_the_patch(self):
        patch = tf.random.stateless_uniform([2, 14, 14], [0, 1])
        # Scale 13/27 puts the 14 patch points on canvas pixel centres: exact.
        scale = 13 / 27
        params = tf.constant([[scale, scale, scale - 1 + 10 / 27, scale - 1 + 4 / 27], [scale, scale, 0.0, 0.0]])
        canvas = spatial_transformer.write(patch, params, 28)
        self.assertEqual(canvas.shape, (2, 28, 28))
        back = spatial_transformer.read(canvas, tf.constant([0, 1]), params, 14)
        self.assertAllClose(back, patch, atol=1e-5)

    def test_write_then_read_of_a_smooth_patch_off_the_pixel_grid(self):
        smooth = tf.image.resize(tf.random.stateless_uniform([1, 4, 4, 1], [2, 3]), [14, 14])[..., 0]
        params = tf.constant([[0.4, 0.6, 0.1, -0.2]])
        back = spatial_transformer.read(spatial_transformer.write(smooth, params, 28), tf.constant([0]), params, 14)
        # Two bilinear interpolations blur a little; the interior agrees closely.
        error = tf.abs(back - smooth)[:, 2:-2, 2:-2]
        self.assertLess(float(tf.reduce_max(error)), 0.12)
        self.assertLess(float(tf.reduce_mean(error)), 0.03)

    def test_read_outside_the_image_is_zero(self):
        images = tf.ones([1, 28, 28])
        patch = spatial_transformer.read(images, tf.constant([0]), tf.constant([[0.1, 0.1, 3.0, 3.0]]), 5)
        self.assertAllEqual(patch, tf.zeros([1, 5, 5]))

    def test_non_finite_coordinates_read_zero_instead_of_failing(self):
        # NaN coordinates used to cast to INT_MIN and fail the gather mid-training.
        images = tf.ones([2, 28, 28])
        xs = tf.constant([[[np.nan, 0.0], [np.inf, -np.inf]]])
        values = spatial_transformer.bilinear_sample(images, tf.constant([1]), xs, tf.zeros_like(xs))
        self.assertAllEqual(values, [[[0.0, 1.0], [0.0, 0.0]]])


class SequentialGenerativeModelTest(tf.test.TestCase):
    def test_shapes_for_0_to_10_shots(self):
        model = helpers.tiny_model("seqgen")
        for shots in range(11):
            support = helpers.random_images([2, shots, 28, 28, 1])
            log_prob = model.log_prob(support, helpers.random_images([2, 28, 28, 1], 1), 3, tf.constant([0, shots]))
            self.assertEqual(log_prob.shape, (2,))
            self.assertTrue(np.all(np.isfinite(log_prob)))
            self.assertEqual(model.sample(support, tf.constant([1, shots]))[0].shape, (2, 28, 28, 1))

    def test_support_is_read(self):
        model = helpers.tiny_model("seqgen")
        model.empty_patch.assign(tf.fill(model.empty_patch.shape, -5.0))  # Make slot 0 lose the attention.
        query = helpers.random_images([2, 28, 28, 1], 1)
        seed = tf.constant([4, 4])
        a = model.log_prob(helpers.random_images([2, 2, 28, 28, 1], 2), query, 4, seed)
        b = model.log_prob(helpers.random_images([2, 2, 28, 28, 1], 3), query, 4, seed)
        self.assertNotAllClose(a, b)

    def test_gradient_reaches_the_attention_parameters(self):
        model = helpers.tiny_model("seqgen")
        batch = helpers.random_images([2, 3, 28, 28, 1])
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.elbo(batch, tf.constant([0, 0]), training=True))
        attention = {
            "support read": model.support_read.dense.kernel,
            "target read": model.target_read.dense.kernel,
            "write": model.write_params.dense.kernel,
            "support query": model.query.kernel,
        }
        gradients = tape.gradient(loss, list(attention.values()))
        for name, gradient in zip(attention, gradients):
            self.assertIsNotNone(gradient, name)
            self.assertGreater(float(tf.reduce_sum(tf.abs(gradient))), 0.0, name)


if __name__ == "__main__":
    absltest.main()
