"""Spatial-transformer reads and writes (Jaderberg et al. 2015) for the sequential model.

Bilinear sampling of single-channel images at real-valued points, a read of a
patch at a scale and shift, and the inverse write onto a canvas.
"""

import tensorflow as tf


def bilinear_sample(images: tf.Tensor, image_index: tf.Tensor, xs: tf.Tensor, ys: tf.Tensor) -> tf.Tensor:
    """Samples single-channel images at real-valued points, zero outside.

    Coordinates are normalised: -1 and 1 are the centres of the first and last
    pixel (align_corners=True), as a spatial transformer's grid.

    Args:
      images: [M, H, W].
      image_index: int32 [...], the image each grid of points reads.
      xs, ys: [..., h, w] horizontal and vertical coordinates.

    Returns:
      [..., h, w] bilinear interpolations.
    """
    height, width = images.shape[1], images.shape[2]
    flat = tf.reshape(images, [-1])
    px = (xs + 1.0) * 0.5 * (width - 1)
    py = (ys + 1.0) * 0.5 * (height - 1)
    x0, y0 = tf.floor(px), tf.floor(py)
    base = tf.cast(image_index, tf.int32)[..., None, None] * (height * width)
    result = 0.0
    for dx in (0.0, 1.0):
        for dy in (0.0, 1.0):
            cx, cy = x0 + dx, y0 + dy
            weight = (1.0 - tf.abs(px - cx)) * (1.0 - tf.abs(py - cy))
            # False for NaN coordinates too, which must not reach the int cast: NaN
            # casts to INT_MIN and the gather fails (seen when a run diverged).
            inside = (cx >= 0) & (cx <= width - 1) & (cy >= 0) & (cy <= height - 1)
            index = base + tf.cast(tf.where(inside, cy, 0.0), tf.int32) * width
            index += tf.cast(tf.where(inside, cx, 0.0), tf.int32)
            result += tf.where(inside, weight * tf.gather(flat, index), 0.0)
    return result


def _grid(size: int) -> tf.Tensor:
    return tf.linspace(-1.0, 1.0, size)


def read(images: tf.Tensor, image_index: tf.Tensor, params: tf.Tensor, patch_size: int) -> tf.Tensor:
    """Spatial-transformer read of a patch_size^2 window.

    Patch point (u, v) in [-1, 1]^2 reads the image at (s_x u + t_x, s_y v + t_y).

    Args:
      images: [M, H, W]; image_index: int32 [...]; params: [..., 4] = (s_x, s_y, t_x, t_y).

    Returns:
      [..., patch_size, patch_size].
    """
    scale_x, scale_y, shift_x, shift_y = tf.unstack(params[..., None, None], axis=-3)
    u = _grid(patch_size)[None, :]
    v = _grid(patch_size)[:, None]
    return bilinear_sample(images, image_index, scale_x * u + shift_x, scale_y * v + shift_y)


def write(patches: tf.Tensor, params: tf.Tensor, canvas_size: int) -> tf.Tensor:
    """Spatial-transformer write, the inverse map of `read`.

    Canvas point (x, y) takes the patch's value at ((x - t_x) / s_x, (y - t_y) / s_y),
    zero outside the patch, so reading back with the same params returns the patch.

    Args:
      patches: [N, p, p]; params: [N, 4] = (s_x, s_y, t_x, t_y), scales > 0.

    Returns:
      [N, canvas_size, canvas_size].
    """
    scale_x, scale_y, shift_x, shift_y = tf.unstack(params[..., None, None], axis=-3)
    x = _grid(canvas_size)[None, :]
    y = _grid(canvas_size)[:, None]
    index = tf.range(tf.shape(patches)[0])
    return bilinear_sample(patches, index, (x - shift_x) / scale_x, (y - shift_y) / scale_y)
