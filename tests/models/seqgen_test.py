"""Sequential generative model specifics: spatial transformer, support reads, gradients."""

import json

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import configs, errors, models, pretrained, warm_start
from oneshot_tf.models import spatial_transformer
from tests import helpers


def _bilinear_by_corners(image, x, y):
    """Textbook bilinear interpolation of one point, zero outside: the four corners."""
    height, width = image.shape
    px, py = (x + 1) * 0.5 * (width - 1), (y + 1) * 0.5 * (height - 1)
    value = 0.0
    for cx in (np.floor(px), np.floor(px) + 1):
        for cy in (np.floor(py), np.floor(py) + 1):
            if 0 <= cx <= width - 1 and 0 <= cy <= height - 1:
                value += (1 - abs(px - cx)) * (1 - abs(py - cy)) * image[int(cy), int(cx)]
    return value


class SpatialTransformerTest(tf.test.TestCase):
    def test_read_equals_corner_by_corner_bilinear_interpolation(self):
        images = np.random.default_rng(0).uniform(size=(3, 28, 28)).astype(np.float32)
        # Scales below and above 1 and shifts that put part of the window outside.
        params = np.array([[0.3, 0.5, 0.1, -0.2], [1.1, 0.9, 0.6, 0.4], [0.7, 0.2, -0.95, 0.9]], np.float32)
        patches = spatial_transformer.read(tf.constant(images), tf.constant(params), 6).numpy()
        grid = np.linspace(-1, 1, 6)
        for n, (scale_x, scale_y, shift_x, shift_y) in enumerate(params):
            expected = [
                [_bilinear_by_corners(images[n], scale_x * u + shift_x, scale_y * v + shift_y) for u in grid]
                for v in grid
            ]
            self.assertAllClose(patches[n], expected, atol=1e-5)

    def test_write_equals_corner_by_corner_bilinear_interpolation(self):
        patches = np.random.default_rng(1).uniform(size=(2, 5, 5)).astype(np.float32)
        params = np.array([[0.4, 0.6, 0.1, -0.2], [0.25, 0.3, 0.8, -0.9]], np.float32)
        canvas = spatial_transformer.write(tf.constant(patches), tf.constant(params), 12).numpy()
        grid = np.linspace(-1, 1, 12)
        for n, (scale_x, scale_y, shift_x, shift_y) in enumerate(params):
            expected = [
                [_bilinear_by_corners(patches[n], (x - shift_x) / scale_x, (y - shift_y) / scale_y) for x in grid]
                for y in grid
            ]
            self.assertAllClose(canvas[n], expected, atol=1e-5)

    def test_params_broadcast_over_the_images_of_a_sequence(self):
        images = tf.random.stateless_uniform([2, 3, 28, 28], [0, 2])
        params = tf.constant([[0.5, 0.5, 0.1, 0.2], [0.9, 0.3, -0.4, 0.0]])
        patches = spatial_transformer.read(images, params[:, None], 7)
        self.assertEqual(patches.shape, (2, 3, 7, 7))
        for n in range(2):
            for j in range(3):
                self.assertAllClose(patches[n, j], spatial_transformer.read(images[n, j], params[n], 7))

    def test_write_then_read_returns_the_patch(self):
        patch = tf.random.stateless_uniform([2, 14, 14], [0, 1])
        # Scale 13/27 puts the 14 patch points on canvas pixel centres: exact.
        scale = 13 / 27
        params = tf.constant([[scale, scale, scale - 1 + 10 / 27, scale - 1 + 4 / 27], [scale, scale, 0.0, 0.0]])
        canvas = spatial_transformer.write(patch, params, 28)
        self.assertEqual(canvas.shape, (2, 28, 28))
        back = spatial_transformer.read(canvas, params, 14)
        self.assertAllClose(back, patch, atol=1e-5)

    def test_write_then_read_of_a_smooth_patch_off_the_pixel_grid(self):
        smooth = tf.image.resize(tf.random.stateless_uniform([1, 4, 4, 1], [2, 3]), [14, 14])[..., 0]
        params = tf.constant([[0.4, 0.6, 0.1, -0.2]])
        back = spatial_transformer.read(spatial_transformer.write(smooth, params, 28), params, 14)
        # Two bilinear interpolations blur a little; the interior agrees closely.
        error = tf.abs(back - smooth)[:, 2:-2, 2:-2]
        self.assertLess(float(tf.reduce_max(error)), 0.12)
        self.assertLess(float(tf.reduce_mean(error)), 0.03)

    def test_an_antialiased_read_on_a_grid_as_fine_as_the_pixels_is_bilinear(self):
        images = tf.random.stateless_uniform([2, 28, 28], [0, 4])
        # Point spacings 0.9 and 0.74 pixels (scale * 27 / (patch_size - 1)).
        for patch_size, params in ((28, [[0.9, 0.9, 0.05, -0.1]]), (12, [[0.3, 0.3, 0.4, 0.2]])):
            params = tf.constant(params * 2)
            self.assertAllClose(
                spatial_transformer.read(images, params, patch_size, antialias=True),
                spatial_transformer.read(images, params, patch_size),
            )

    def test_an_antialiased_read_of_a_coarse_grid_sees_every_pixel(self):
        whole = tf.constant([[1.0, 1.0, 0.0, 0.0]])
        spacing = 27 / 11  # 12 points over the 28 pixels.
        image = tf.random.stateless_uniform([1, 28, 28], [1, 4])
        # The tents sum to one over the window: the patch keeps the image's ink.
        ink = tf.reduce_sum(spatial_transformer.read(image, whole, 12, antialias=True)) * spacing**2
        self.assertAllClose(ink, tf.reduce_sum(image), rtol=1e-5)
        plain_ink = tf.reduce_sum(spatial_transformer.read(image, whole, 12)) * spacing**2
        self.assertNotAllClose(plain_ink, tf.reduce_sum(image), rtol=1e-2)
        # A one-pixel vertical stroke in each of the 28 columns: bilinear sampling
        # misses the columns between the points, the antialiased read none.
        strokes = tf.eye(28)[:, None, :] * tf.ones([28, 28, 1])  # [column, 28, 28]
        seen = tf.reduce_sum(spatial_transformer.read(strokes, whole, 12, antialias=True), axis=[1, 2])
        plain_seen = tf.reduce_sum(spatial_transformer.read(strokes, whole, 12), axis=[1, 2])
        self.assertAllClose(seen * spacing**2, tf.fill([28], 28.0), rtol=1e-5)  # Each stroke's 28 pixels.
        self.assertLess(float(tf.reduce_min(plain_seen)), 1e-6)

    def test_read_outside_the_image_is_zero(self):
        images = tf.ones([1, 28, 28])
        patch = spatial_transformer.read(images, tf.constant([[0.1, 0.1, 3.0, 3.0]]), 5)
        self.assertAllEqual(patch, tf.zeros([1, 5, 5]))

    def test_infinite_coordinates_read_zero_and_nan_ones_do_not_fail(self):
        images = tf.ones([28, 28])
        values = spatial_transformer.bilinear_sample(images, tf.constant([0.0, np.inf, -np.inf]), tf.zeros([1]))
        self.assertAllEqual(values, [[1.0, 0.0, 0.0]])
        # A diverged run's NaN parameters give a NaN value (a skipped step), not an error.
        values = spatial_transformer.bilinear_sample(images, tf.constant([0.0, np.nan]), tf.zeros([1]))
        self.assertEqual(values[0, 0], 1.0)
        self.assertTrue(np.isnan(values[0, 1]))


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


class DetachedReadWindowsTest(tf.test.TestCase):
    def test_same_bound_and_the_windows_learn_but_no_gradient_reaches_the_state_through_them(self):
        model = helpers.tiny_model("seqgen")
        batch = helpers.random_images([2, 3, 28, 28, 1])
        seed = tf.constant([1, 2])
        model.elbo(batch, seed)  # Builds the layers.
        windows = [model.target_read.dense.kernel, model.support_read.dense.kernel]
        for kernel in windows:  # Zeros at first: the windows would not depend on the state.
            kernel.assign(tf.random.stateless_normal(kernel.shape, [5, 6], stddev=0.5))
        results = {}
        for detach in (False, True):
            model.detach_read_windows = detach
            with tf.GradientTape(persistent=True) as tape:
                bound = model.elbo(batch, seed, training=True)
                loss = -tf.reduce_mean(bound)
            results[detach] = bound, tape.gradient(loss, model.decoder_cell.kernel), tape.gradient(loss, windows)
        self.assertAllClose(results[True][0], results[False][0])
        for gradient in results[True][2]:
            self.assertGreater(float(tf.reduce_sum(tf.abs(gradient))), 0.0)
        # The decoder's kernel loses the part of its gradient that came through the windows.
        self.assertNotAllClose(results[True][1], results[False][1])


class AntialiasedReadsTest(tf.test.TestCase):
    def test_a_support_pixel_between_the_read_points_reaches_the_bound(self):
        # The tiny config's 3 x 3 reads through the untrained window (scale 0.83, no
        # shift) sample pixels near rows and columns 2.3, 13.5 and 24.7: pixel (8, 8)
        # lies between them, pixel (13, 13) next to one.
        query = helpers.random_images([1, 28, 28, 1], 1)
        support = helpers.random_images([1, 2, 28, 28, 1], 2)
        gradients = {}
        for antialias in (False, True):
            model = helpers.tiny_model("seqgen", antialias_reads=antialias)
            with tf.GradientTape() as tape:
                tape.watch(support)
                log_prob = model.log_prob(support, query, 2, tf.constant([3, 3]))
            gradients[antialias] = tf.abs(tape.gradient(log_prob, support))[0, :, :, :, 0]
        self.assertEqual(float(tf.reduce_max(gradients[False][:, 8, 8])), 0.0)
        self.assertGreater(float(tf.reduce_min(gradients[True][:, 8, 8])), 0.0)
        for antialias in (False, True):
            self.assertGreater(float(tf.reduce_min(gradients[antialias][:, 13, 13])), 0.0)


class TargetReadSizeTest(tf.test.TestCase):
    def test_the_encoder_sees_every_target_pixel_while_the_support_reads_keep_their_size(self):
        # The tiny config's 3 x 3 reads through the untrained window sample near rows and
        # columns 2.3, 13.5 and 24.7 (AntialiasedReadsTest); a 28 x 28 read through the
        # same window has points 0.83 pixels apart over rows and columns 2.3 to 24.7.
        targets = helpers.random_images([1, 28, 28], 1)
        support = helpers.random_images([2, 28, 28], 2)
        slot_of, mask = tf.constant([[0, 1]]), tf.constant([[True, True, True]])
        gradients = {}
        for size in (0, 28):
            model = helpers.tiny_model("seqgen", target_read_size=size)
            with tf.GradientTape() as tape:
                tape.watch(targets)
                # -KL: the targets reach it only through the encoder's read.
                _, log_ratio = model._run(targets, support, slot_of, mask, tf.constant([3, 3]), training_kl=True)
            gradients[size] = tf.abs(tape.gradient(log_ratio, targets))[0]
            self.assertEqual(model.key.kernel.shape[0], 3 * 3)
            self.assertEqual(model.encoder_cell.kernel.shape[0], 2 * (size or 3) ** 2 + 3 * 3 + model.hidden_size)
        self.assertEqual(float(gradients[0][8, 8]), 0.0)
        self.assertGreater(float(tf.reduce_min(gradients[28][3:25, 3:25])), 0.0)

    def test_a_negative_size_is_refused(self):
        with self.assertRaisesRegex(ValueError, "target_read_size must be >= 0"):
            helpers.tiny_model("seqgen", target_read_size=-1)


class HiddenCanvasTest(tf.test.TestCase):
    """canvas_channels / observation_filters: the paper's hidden canvas and its f_o."""

    def test_scores_samples_and_learns_through_the_observation(self):
        model = helpers.tiny_model("seqgen", canvas_channels=3, observation_filters=5)
        support = helpers.random_images([2, 2, 28, 28, 1])
        log_prob = model.log_prob(support, helpers.random_images([2, 28, 28, 1], 1), 3, tf.constant([0, 2]))
        self.assertEqual(log_prob.shape, (2,))
        self.assertTrue(np.all(np.isfinite(log_prob)))
        probs, images = model.sample(support, tf.constant([1, 2]))
        self.assertEqual(probs.shape, (2, 28, 28, 1))
        self.assertEqual(set(np.unique(images)) - {0.0, 1.0}, set())
        self.assertEqual(model.write_patch.kernel.shape[-1], 3 * model.write_size**2)
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.elbo(helpers.random_images([2, 3, 28, 28, 1]), tf.constant([0, 0])))
        kernels = [layer.kernel for layer in model.observation.layers] + [model.write_patch.kernel]
        for kernel, gradient in zip(kernels, tape.gradient(loss, kernels)):
            self.assertGreater(float(tf.reduce_sum(tf.abs(gradient))), 0.0, kernel.path)

    def test_every_channel_reaches_the_logits(self):
        model = helpers.tiny_model("seqgen", canvas_channels=3, observation_filters=4)
        canvas = tf.random.stateless_normal([2, 3, 28, 28], [0, 3])
        with tf.GradientTape() as tape:
            tape.watch(canvas)
            logits = model._logits(canvas)
        self.assertEqual(logits.shape, (2, 28, 28))
        by_channel = tf.reduce_sum(tf.abs(tape.gradient(logits, canvas)), axis=[0, 2, 3])
        self.assertTrue(np.all(by_channel.numpy() > 0), by_channel)

    def test_a_canvas_of_several_channels_without_f_o_is_refused(self):
        with self.assertRaisesRegex(ValueError, "canvas_channels=2 needs observation_filters > 0"):
            helpers.tiny_model("seqgen", canvas_channels=2)
        with self.assertRaisesRegex(ValueError, "canvas_channels must be >= 1"):
            helpers.tiny_model("seqgen", canvas_channels=0, observation_filters=2)

    def test_the_shipped_model_is_rebuilt_from_its_recorded_model_kwargs(self):
        """pretrained/seqgen/config.json's model_kwargs (keys it predates at their
        defaults) build a model that restores the shipped weights and scores as the
        SavedModel does: the shipped model still fits the code."""
        try:
            folder = pretrained.model_dir("seqgen")
        except errors.ExportNotFoundError as e:
            self.skipTest(f"no shipped seqgen: {e}")
        recorded = json.loads((folder.parent / "config.json").read_text())["model_kwargs"]
        model = models.build_model("seqgen", **{**configs.get_config("seqgen").model_kwargs.to_dict(), **recorded})
        warm_start.initialise(model, folder)
        support = helpers.random_images([1, 2, 28, 28, 1])
        query = helpers.random_images([1, 28, 28, 1], 1)
        shipped = pretrained.load("seqgen").log_prob(support, query, 2, [3, 4])
        self.assertAllClose(model.log_prob(support, query, 2, tf.constant([3, 4])), shipped, atol=1e-3)


if __name__ == "__main__":
    absltest.main()
