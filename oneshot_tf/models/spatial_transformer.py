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

A read on a grid coarser than the pixels (a window wider than its patch) samples
some pixels and skips those between the points, so a one-pixel stroke there is not
seen. `read(..., antialias=True)` widens the tent to the grid's spacing r (at least
one pixel) and divides it by r, as image resizing with antialiasing does: the
tents then sum to one over the window, and every pixel in it reaches the patch.
"""

import tensorflow as tf


def _tent_weights(positions: tf.Tensor, size: int, radius=None) -> tf.Tensor:
    """[..., n] pixel coordinates -> [..., n, size] interpolation weights k(p - i), or
    k((p - i) / r) / r with `radius` r (broadcasting against [..., 1])."""
    distance = tf.abs(positions[..., None] - tf.range(size, dtype=positions.dtype))
    if radius is None:
        return tf.nn.relu(1.0 - distance)
    radius = radius[..., None]
    return tf.nn.relu(1.0 - distance / radius) / radius


def bilinear_sample(images: tf.Tensor, xs: tf.Tensor, ys: tf.Tensor, radii=None) -> tf.Tensor:
    """Samples single-channel images on separable grids, zero outside.

    Coordinates are normalised: -1 and 1 are the centres of the first and last
    pixel (align_corners=True), as a spatial transformer's grid. Grid point (v, u)
    reads the image at (xs[u], ys[v]).

    Args:
      images: [..., H, W].
      xs: [..., w] horizontal coordinates; ys: [..., h] vertical coordinates. The
        leading dims of images, xs and ys broadcast against each other.
      radii: None (bilinear), or the tents' half-widths in pixels (r_x, r_y), each
        [..., 1] broadcasting against xs and ys.

    Returns:
      [..., h, w] bilinear interpolations (broadcast leading dims). Non-finite
      coordinates give non-finite values.
    """
    height, width = images.shape[-2], images.shape[-1]
    radius_x, radius_y = radii if radii is not None else (None, None)
    weights_x = _tent_weights((xs + 1.0) * 0.5 * (width - 1), width, radius_x)  # [..., w, W]
    weights_y = _tent_weights((ys + 1.0) * 0.5 * (height - 1), height, radius_y)  # [..., h, H]
    return tf.linalg.matmul(weights_y, tf.linalg.matmul(images, weights_x, transpose_b=True))


def _grid(size: int) -> tf.Tensor:
    return tf.linspace(-1.0, 1.0, size)


def read(images: tf.Tensor, params: tf.Tensor, patch_size: int, antialias: bool = False) -> tf.Tensor:
    """Spatial-transformer read of a patch_size^2 window.

    Patch point (u, v) in [-1, 1]^2 reads the image at (s_x u + t_x, s_y v + t_y).

    Args:
      images: [..., H, W]; params: [..., 4] = (s_x, s_y, t_x, t_y), leading dims
        broadcasting against the images'.
      antialias: each point averages the pixels within the grid's spacing of it (the
        module's docstring); on a grid at least as fine as the pixels, the same as
        bilinear.

    Returns:
      [..., patch_size, patch_size].
    """
    scale_x, scale_y, shift_x, shift_y = tf.unstack(params[..., None], axis=-2)
    grid = _grid(patch_size)
    radii = None
    if antialias:
        height, width = images.shape[-2], images.shape[-1]
        intervals = max(patch_size - 1, 1)
        radii = (
            tf.maximum(1.0, tf.abs(scale_x) * (width - 1) / intervals),
            tf.maximum(1.0, tf.abs(scale_y) * (height - 1) / intervals),
        )
    return bilinear_sample(images, scale_x * grid + shift_x, scale_y * grid + shift_y, radii)


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
