"""Building blocks shared by every model: encoders, decoders, distribution heads.

Networks compute in the global Keras dtype policy (bfloat16 under
`mixed_bfloat16`); every distribution is built from float32 parameters, so
likelihoods, KL terms and log-sum-exps are float32 whatever the policy.
"""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

IMAGE_SHAPE = (28, 28, 1)


def merge_leading(x: tf.Tensor, num_dims: int = 2) -> tf.Tensor:
    """[d0, ..., d_{n-1}, *rest] -> [d0 * ... * d_{n-1}, *rest]."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[-1], shape[num_dims:]], axis=0))


def split_leading(x: tf.Tensor, leading_shape) -> tf.Tensor:
    """[prod(leading_shape), *rest] -> [*leading_shape, *rest]."""
    return tf.reshape(x, tf.concat([leading_shape, tf.shape(x)[1:]], axis=0))


def batch_apply(fn, x: tf.Tensor, num_dims: int = 2):
    """Applies `fn` (which takes one batch dimension) to x with `num_dims` batch dims.

    Example: [shots, batch, 28, 28, 1] -> [shots * batch, 28, 28, 1] -> fn ->
    [shots, batch, features].
    """
    leading = tf.shape(x)[:num_dims]
    return split_leading(fn(merge_leading(x, num_dims)), leading)


def encode_items(encoder, images: tf.Tensor, output_size: int, training: bool = False) -> tf.Tensor:
    """Applies an image encoder to [..., 28, 28, 1] (1 or 2 leading dims) -> [..., output_size].

    Handles zero items (a 0-shot support set) without calling the encoder: TF's conv
    on an empty batch returns the wrong channel count.
    """
    num_leading = images.shape.rank - 3
    leading = tf.shape(images)[:num_leading]
    flat = merge_leading(images, num_leading)

    def encode():
        return encoder(flat, training=training)

    def empty():
        return tf.zeros([0, output_size], encoder.compute_dtype)

    if flat.shape[0] == 0:
        features = empty()
    elif flat.shape[0] is not None:
        features = encode()
    else:
        features = tf.cond(tf.shape(flat)[0] > 0, encode, empty)
    return split_leading(features, leading)


# Layers that emit distribution parameters (pixel logits, Gaussian means and scales)
# compute in float32 under every policy, as Keras' mixed-precision guide advises for
# output layers: they are a tiny share of the FLOPs.
OUTPUT_DTYPE = "float32"


def bernoulli_images(logits: tf.Tensor) -> tfd.Distribution:
    """p(x | ...) with independent Bernoulli pixels, event shape [28, 28, 1]."""
    return tfd.Independent(tfd.Bernoulli(logits=tf.cast(logits, tf.float32)), reinterpreted_batch_ndims=3)


def draw_binary(probs: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Binary images drawn from Bernoulli means `probs`, reproducible from `seed` [2]."""
    return tf.cast(tf.random.stateless_uniform(tf.shape(probs), seed) < probs, tf.float32)


def log_mean_exp(log_weights: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """log (1/K) sum_k exp(w_k), in float32."""
    log_weights = tf.cast(log_weights, tf.float32)
    num = tf.cast(tf.shape(log_weights)[axis], tf.float32)
    return tf.reduce_logsumexp(log_weights, axis=axis) - tf.math.log(num)


class NormalHead(keras.layers.Layer):
    """Maps features to a diagonal Gaussian over `size` dims (float32, event shape [size])."""

    def __init__(self, size: int, *, min_scale: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.min_scale = min_scale
        self.dense = keras.layers.Dense(2 * size, dtype=OUTPUT_DTYPE)

    def call(self, features: tf.Tensor) -> tfd.Distribution:
        """features: [..., F] -> MultivariateNormalDiag with batch shape [...], event [size]."""
        params = tf.cast(self.dense(features), tf.float32)
        loc, raw_scale = tf.split(params, 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.nn.softplus(raw_scale) + self.min_scale)


class BatchNorm(keras.layers.Layer):
    """Batch norm over every leading dim of [..., features], for any rank, as one fused op.

    Same variables, defaults and statistics as keras.layers.BatchNormalization
    (gamma, beta, moving mean and variance; momentum 0.99, epsilon 1e-3), but:
    - it takes any rank (Keras' layer fixes the rank at its first call; our feature
      tensors are [B, T, F] in training and [K, B, F] in evaluation), and
    - it runs TF's FusedBatchNormV3 on the compute dtype with float32 statistics.
      Keras 3 casts bfloat16 inputs to float32 and normalises with a dozen
      elementwise ops: in an op profile of the statistician's bf16 step on 2 cores
      they took 0.37 of 1.09 s; with this layer the step took 0.81 s.
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon

    def build(self, input_shape):
        shape = (input_shape[-1],)
        # float32 whatever the policy: the fused op takes float32 scale and statistics.
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta", autocast=False)
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", name="moving_mean", trainable=False, autocast=False
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", name="moving_variance", trainable=False, autocast=False
        )

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x: [..., C] (NHWC for images) -> same shape and dtype."""
        shape = tf.shape(x)
        as_4d = x if x.shape.rank == 4 else tf.reshape(x, [-1, 1, 1, x.shape[-1]])
        if training:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                as_4d, self.gamma.value, self.beta.value, epsilon=self.epsilon, is_training=True
            )
            decay = 1.0 - self.momentum
            self.moving_mean.assign(self.moving_mean * self.momentum + tf.stop_gradient(mean) * decay)
            self.moving_variance.assign(self.moving_variance * self.momentum + tf.stop_gradient(variance) * decay)
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                as_4d,
                self.gamma.value,
                self.beta.value,
                mean=self.moving_mean.value,
                variance=self.moving_variance.value,
                epsilon=self.epsilon,
                is_training=False,
            )
        return y if x.shape.rank == 4 else tf.reshape(y, shape)


class Chain(keras.layers.Layer):
    """Applies layers in order, like keras.Sequential but without fixing the input rank.

    (A Sequential built on [K, N, D] inputs rejects [N, D] ones; ours sees both.)
    """

    def __init__(self, chain, **kwargs):
        super().__init__(**kwargs)
        self.chain = list(chain)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        for layer in self.chain:
            if isinstance(layer, BatchNorm):
                x = layer(x, training=training)
            else:
                x = layer(x)
        return x


def mlp(hidden_sizes, activation: str = "tanh") -> Chain:
    """Dense layers of the given sizes, each followed by `activation`; any leading dims."""
    return Chain([keras.layers.Dense(h, activation=activation) for h in hidden_sizes])


class FcEncoder(keras.layers.Layer):
    """Flattens images and applies an MLP: [N, 28, 28, 1] -> [N, hidden_sizes[-1]]."""

    def __init__(self, hidden_sizes=(200, 200), activation: str = "tanh", **kwargs):
        super().__init__(**kwargs)
        if not hidden_sizes:
            raise ValueError("FcEncoder needs at least one hidden size")
        self.flatten = keras.layers.Flatten()
        self.net = mlp(hidden_sizes, activation)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        return self.net(self.flatten(images))


class FcDecoder(keras.layers.Layer):
    """MLP from a code to Bernoulli logits: [N, D] -> [N, 28, 28, 1]."""

    def __init__(self, hidden_sizes=(200, 200), activation: str = "tanh", **kwargs):
        super().__init__(**kwargs)
        self.net = mlp(hidden_sizes, activation)
        self.logits = keras.layers.Dense(math.prod(IMAGE_SHAPE))
        self.reshape = keras.layers.Reshape(IMAGE_SHAPE)

    def call(self, code: tf.Tensor) -> tf.Tensor:
        return self.reshape(self.logits(self.net(code)))


class ConvEncoder(keras.layers.Layer):
    """Strided conv stack: [N, 28, 28, 1] -> [N, features].

    Each stage is `convs_per_stage` 3x3 convs (the last one stride 2) with batch norm
    and ELU, so 28 -> 14 -> 7 -> 4 for three stages.
    """

    def __init__(self, channels=(32, 64, 128), convs_per_stage: int = 1, batch_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        size = 28
        for _ in channels:
            size = (size + 1) // 2
        self.output_size = size * size * channels[-1]
        blocks = []
        for c in channels:
            for i in range(convs_per_stage):
                stride = 2 if i == convs_per_stage - 1 else 1
                blocks.append(keras.layers.Conv2D(c, 3, strides=stride, padding="same", use_bias=not batch_norm))
                if batch_norm:
                    blocks.append(BatchNorm())
                blocks.append(keras.layers.Activation("elu"))
        blocks.append(keras.layers.Flatten())
        self.net = Chain(blocks)

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.net(images, training=training)


class ConvDecoder(keras.layers.Layer):
    """Mirror of ConvEncoder: [N, D] -> Bernoulli logits [N, 28, 28, 1].

    Dense to [4, 4, channels[0]], then transposed convs 4 -> 7 -> 14 -> 28.
    """

    def __init__(self, channels=(128, 64, 32), batch_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        if len(channels) != 3:
            raise ValueError(f"ConvDecoder upsamples 4 -> 7 -> 14 -> 28 and needs 3 channels, got {channels}")
        blocks = [keras.layers.Dense(4 * 4 * channels[0], activation="elu"), keras.layers.Reshape((4, 4, channels[0]))]
        # 4 -> 8, cropped to 7, then 7 -> 14 -> 28.
        for i, c in enumerate(channels):
            blocks.append(keras.layers.Conv2DTranspose(c, 3, strides=2, padding="same", use_bias=not batch_norm))
            if batch_norm:
                blocks.append(BatchNorm())
            blocks.append(keras.layers.Activation("elu"))
            if i == 0:
                blocks.append(keras.layers.Cropping2D(((0, 1), (0, 1))))
        blocks.append(keras.layers.Conv2D(1, 3, padding="same", dtype=OUTPUT_DTYPE))
        self.net = Chain(blocks)

    def call(self, code: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.net(code, training=training)


def make_encoder(architecture: str, sizes, activation: str) -> keras.layers.Layer:
    """`fc`: FcEncoder(sizes); `conv`: ConvEncoder(channels=sizes)."""
    if architecture == "fc":
        return FcEncoder(sizes, activation)
    if architecture == "conv":
        return ConvEncoder(sizes)
    raise ValueError(f"unknown architecture {architecture!r}; valid: fc, conv")


def make_decoder(architecture: str, sizes, activation: str) -> keras.layers.Layer:
    """`fc`: FcDecoder(reversed sizes); `conv`: ConvDecoder(reversed channels)."""
    if architecture == "fc":
        return FcDecoder(tuple(reversed(sizes)), activation)
    if architecture == "conv":
        return ConvDecoder(tuple(reversed(sizes)))
    raise ValueError(f"unknown architecture {architecture!r}; valid: fc, conv")


class GaussianMlp(keras.layers.Layer):
    """MLP followed by a NormalHead: [..., D] -> Gaussian over `size` dims, batch shape [...]."""

    def __init__(self, hidden_sizes, size: int, activation: str = "tanh", **kwargs):
        super().__init__(**kwargs)
        self.net = mlp(hidden_sizes, activation)
        self.head = NormalHead(size)

    def call(self, inputs: tf.Tensor) -> tfd.Distribution:
        return self.head(self.net(inputs))


def standard_normal(size: int) -> tfd.Distribution:
    """N(0, I) over `size` dims, float32, event shape [size]."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros([size], tf.float32))


def _conv_bn_elu(channels: int, *, kernel: int = 3, strides: int = 1, padding: str = "same", transpose=False):
    conv = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    return [
        conv(channels, kernel, strides=strides, padding=padding, use_bias=False),
        BatchNorm(),
        keras.layers.Activation("elu"),
    ]


class UpConvDecoder(keras.layers.Layer):
    """Code -> Bernoulli logits [N, 28, 28, 1] by 2x2 transposed convs, 4 -> 8 -> 16 -> 28.

    Dense to [4, 4, channels[0]]; each stage is `convs_per_stage` 3x3 convs and a 2x2
    stride-2 transposed conv; the last stage's last 3x3 conv is 'valid' (16 -> 14) so
    the final transposed conv lands on 28. A 1x1 conv gives the logits. Batch norm and
    ELU after every layer but the last (the Neural Statistician's Omniglot decoder).
    """

    def __init__(self, channels=(256, 128, 64), convs_per_stage: int = 2, **kwargs):
        super().__init__(**kwargs)
        if len(channels) != 3 or convs_per_stage < 1:
            raise ValueError(f"UpConvDecoder needs 3 stage channels and convs_per_stage >= 1, got {channels}")
        blocks = [
            keras.layers.Dense(4 * 4 * channels[0], use_bias=False),
            BatchNorm(),
            keras.layers.Activation("elu"),
            keras.layers.Reshape((4, 4, channels[0])),
        ]
        for stage, c in enumerate(channels):
            for i in range(convs_per_stage):
                last = stage == len(channels) - 1 and i == convs_per_stage - 1
                blocks += _conv_bn_elu(c, padding="valid" if last else "same")
            blocks += _conv_bn_elu(c, kernel=2, strides=2, transpose=True)
        blocks.append(keras.layers.Conv2D(1, 1, dtype=OUTPUT_DTYPE))
        self.net = Chain(blocks)

    def call(self, code: tf.Tensor, training: bool = False) -> tf.Tensor:
        """code: [N, D] -> logits [N, 28, 28, 1]."""
        return self.net(code, training=training)


class ResidualBlock(keras.layers.Layer):
    """x + f(x) with f = `num_layers` x [Dense + batch norm] (ELU between), then ELU.

    Any leading dims: [..., width] -> [..., width].
    """

    def __init__(self, width: int, num_layers: int = 3, **kwargs):
        super().__init__(**kwargs)
        chain = []
        for i in range(num_layers):
            chain += [keras.layers.Dense(width, use_bias=False), BatchNorm()]
            if i < num_layers - 1:
                chain.append(keras.layers.Activation("elu"))
        self.net = Chain(chain)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return tf.nn.elu(x + self.net(x, training=training))


class ConditionalGaussian(keras.layers.Layer):
    """Gaussian over `size` dims given several inputs: sum of Dense(width) of each
    input, batch norm, ELU, a ResidualBlock, then a NormalHead.

    Inputs share leading dims [...]; returns batch shape [...], event [size].
    """

    def __init__(self, width: int, size: int, num_inputs: int, *, residual_layers: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.projections = [keras.layers.Dense(width) for _ in range(num_inputs)]
        self.norm = BatchNorm()
        self.residual = ResidualBlock(width, residual_layers)
        self.head = NormalHead(size)

    def call(self, inputs: list, training: bool = False) -> tfd.Distribution:
        if len(inputs) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} inputs, got {len(inputs)}")
        # `+` broadcasts, so inputs may differ in leading dims ([B, T, F] with [K, B, T, C]).
        hidden = self.projections[0](inputs[0])
        for project, x in zip(self.projections[1:], inputs[1:]):
            hidden = hidden + project(x)
        hidden = tf.nn.elu(self.norm(hidden, training=training))
        return self.head(self.residual(hidden, training=training))


class GruCell(keras.layers.Layer):
    """A GRU update for any leading dims: (inputs [..., I], state [..., units]) -> state."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.gates = keras.layers.Dense(2 * units, activation="sigmoid")
        self.candidate = keras.layers.Dense(units, activation="tanh")

    def call(self, inputs: tf.Tensor, state: tf.Tensor) -> tf.Tensor:
        update, reset = tf.split(self.gates(tf.concat([inputs, state], axis=-1)), 2, axis=-1)
        candidate = self.candidate(tf.concat([inputs, reset * state], axis=-1))
        return (1.0 - update) * candidate + update * state


class ResidualConvEncoder(keras.layers.Layer):
    """ResNet-style encoder [N, 28, 28, 1] -> [N, features]: 28 -> 13 -> 6 -> 3.

    Each stage: a strided 3x3 conv ('valid', 'valid', 'same') then a residual block
    of two 3x3 convs; ELU activations. (Bartunov & Vetrov 2018's conv GMN encoder.)
    """

    def __init__(self, channels=(32, 64, 128), **kwargs):
        super().__init__(**kwargs)
        if len(channels) != 3:
            raise ValueError(f"ResidualConvEncoder has 3 stages (28 -> 13 -> 6 -> 3), got {channels}")
        self.output_size = 3 * 3 * channels[-1]
        self.downs = [
            keras.layers.Conv2D(c, 3, strides=2, padding=p, activation="elu")
            for c, p in zip(channels, ("valid", "valid", "same"))
        ]
        self.residuals = [
            [keras.layers.Conv2D(c, 3, padding="same", activation="elu"), keras.layers.Conv2D(c, 3, padding="same")]
            for c in channels
        ]
        self.flatten = keras.layers.Flatten()

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        del training
        x = images
        for down, (conv_a, conv_b) in zip(self.downs, self.residuals):
            x = down(x)
            x = tf.nn.elu(x + conv_b(conv_a(x)))
        return self.flatten(x)


class ResidualConvDecoder(keras.layers.Layer):
    """Mirror of ResidualConvEncoder: [N, D] -> logits [N, 28, 28, 1], 3 -> 6 -> 13 -> 28."""

    def __init__(self, channels=(128, 64, 32), **kwargs):
        super().__init__(**kwargs)
        if len(channels) != 3:
            raise ValueError(f"ResidualConvDecoder has 3 stages (3 -> 6 -> 13 -> 28), got {channels}")
        self.project = keras.layers.Dense(3 * 3 * channels[0], activation="elu")
        self.reshape = keras.layers.Reshape((3, 3, channels[0]))
        self.residuals = [
            [keras.layers.Conv2D(c, 3, padding="same", activation="elu"), keras.layers.Conv2D(c, 3, padding="same")]
            for c in channels
        ]
        next_channels = list(channels[1:]) + [channels[-1]]
        self.ups = [
            keras.layers.Conv2DTranspose(c, k, strides=2, padding=p, activation="elu")
            for c, k, p in zip(next_channels, (3, 3, 4), ("same", "valid", "valid"))
        ]
        self.logits = keras.layers.Conv2D(1, 3, padding="same", dtype=OUTPUT_DTYPE)

    def call(self, code: tf.Tensor, training: bool = False) -> tf.Tensor:
        del training
        x = self.reshape(self.project(code))
        for (conv_a, conv_b), up in zip(self.residuals, self.ups):
            x = tf.nn.elu(x + conv_b(conv_a(x)))
            x = up(x)
        return self.logits(x)


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


def transformer_read(images: tf.Tensor, image_index: tf.Tensor, params: tf.Tensor, patch_size: int) -> tf.Tensor:
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


def transformer_write(patches: tf.Tensor, params: tf.Tensor, canvas_size: int) -> tf.Tensor:
    """Spatial-transformer write, the inverse map of `transformer_read`.

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
