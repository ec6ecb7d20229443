"""Spatial-transformer reads and writes (Jaderberg et al. 2015) for the sequential model.

Bilinear sampling of single-channel images on axis-aligned grids (a scale and a
shift per axis, no rotation), a read of a patch and the inverse write onto a canvas.

On such a grid bilinear interpolation is separable: the weight of pixel (y, x) for
grid point (v, u) is k(py_v - y) k(px_u - x) with the tent k(d) = max(0, 1 - |d|),
so sampling is two matrix products, K_y @ image @ K_x^T, as DRAW's filterbanks
(Gregor et al. 2015) but with the tent in place of a Gaussian. Pixels outside the
image have no column in K, which is zero padding. Matrix products, and their
gradients, run as batched kernels on every device, in place of four corner
lookups per point (gathers, with scatter-add gradients).
"""

import tensorflow as tf


def _tent_weights(positions: tf.Tensor, size: int) -> tf.Tensor:
    """[..., n] pixel coordinates -> [..., n, size] interpolation weights k(p - i)."""
    pixels = tf.range(size, dtype=positions.dtype)
    return tf.nn.relu(1.0 - tf.abs(positions[..., None] - pixels))


def bilinear_sample(images: tf.Tensor, xs: tf.Tensor, ys: tf.Tensor) -> tf.Tensor:
    """Samples single-channel images on separable grids, zero outside.

    Coordinates are normalised: -1 and 1 are the centres of the first and last
    pixel (align_corners=True), as a spatial transformer's grid. Grid point (v, u)
    reads the image at (xs[u], ys[v]).

    Args:
      images: [..., H, W].
      xs: [..., w] horizontal coordinates; ys: [..., h] vertical coordinates. The
        leading dims of images, xs and ys broadcast against each other.

    Returns:
      [..., h, w] bilinear interpolations (broadcast leading dims). Non-finite
      coordinates give non-finite values.
    """
    height, width = images.shape[-2], images.shape[-1]
    weights_x = _tent_weights((xs + 1.0) * 0.5 * (width - 1), width)  # [..., w, W]
    weights_y = _tent_weights((ys + 1.0) * 0.5 * (height - 1), height)  # [..., h, H]
    return tf.linalg.matmul(weights_y, tf.linalg.matmul(images, weights_x, transpose_b=True))


def _grid(size: int) -> tf.Tensor:
    return tf.linspace(-1.0, 1.0, size)


def read(images: tf.Tensor, params: tf.Tensor, patch_size: int) -> tf.Tensor:
    """Spatial-transformer read of a patch_size^2 window.

    Patch point (u, v) in [-1, 1]^2 reads the image at (s_x u + t_x, s_y v + t_y).

    Args:
      images: [..., H, W]; params: [..., 4] = (s_x, s_y, t_x, t_y), leading dims
        broadcasting against the images'.

    Returns:
      [..., patch_size, patch_size].
    """
    scale_x, scale_y, shift_x, shift_y = tf.unstack(params[..., None], axis=-2)
    grid = _grid(patch_size)
    return bilinear_sample(images, scale_x * grid + shift_x, scale_y * grid + shift_y)


def write(patches: tf.Tensor, params: tf.Tensor, canvas_size: int) -> tf.Tensor:
    """Spatial-transformer write, the inverse map of `read`.

    Canvas point (x, y) takes the patch's value at ((x - t_x) / s_x, (y - t_y) / s_y),
    zero outside the patch, so reading back with the same params returns the patch.

    Args:
      patches: [..., p, p]; params: [..., 4] = (s_x, s_y, t_x, t_y), scales > 0.

    Returns:
      [..., canvas_size, canvas_size].
    """
    scale_x, scale_y, shift_x, shift_y = tf.unstack(params[..., None], axis=-2)
    grid = _grid(canvas_size)
    return bilinear_sample(patches, (grid - shift_x) / scale_x, (grid - shift_y) / scale_y)
