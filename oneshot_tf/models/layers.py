"""Building blocks that two or more models share: reshaping helpers, MLP and conv
encoders and decoders, distribution heads, batch norm, support masks. A block one model alone uses
lives next to that model.

Networks compute in the global Keras dtype policy (bfloat16 under
`mixed_bfloat16`); every distribution is built from float32 parameters, so
likelihoods, KL terms and log-sum-exps are float32 whatever the policy.
"""

import contextlib
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

    items = flat.shape[0]
    features = branch(items > 0 if items is not None else tf.shape(flat)[0] > 0, encode, empty)
    return split_leading(features, leading)


def branch(predicate, if_true, if_false):
    """`if_true()` or `if_false()`: a Python choice when `predicate` is a bool (static
    shapes), tf.cond otherwise (e.g. a serving signature with a dynamic number of shots)."""
    if isinstance(predicate, bool):
        return if_true() if predicate else if_false()
    return tf.cond(predicate, if_true, if_false)


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
        self.dense = keras.layers.Dense(2 * size, kernel_initializer=new_kernel_initializer(), dtype=OUTPUT_DTYPE)

    def call(self, features: tf.Tensor, training: bool = False) -> tfd.Distribution:
        """features: [..., F] -> MultivariateNormalDiag with batch shape [...], event [size].

        `training` is accepted, and unused, so heads with batch norm can stand in.
        """
        del training
        params = tf.cast(self.dense(features), tf.float32)
        loc, raw_scale = tf.split(params, 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.nn.softplus(raw_scale) + self.min_scale)


_BATCH_NORM_MOMENTUM = [0.99]
_KERNEL_INITIALIZER = ["glorot_uniform"]
KERNEL_INITIALIZERS = ("glorot_uniform", "xavier_normal_relu_gain")


@contextlib.contextmanager
def kernel_initializer(name: str):
    """Dense and conv layers that ask `new_kernel_initializer()` inside the block get
    `name`: "glorot_uniform" (Keras' default) or "xavier_normal_relu_gain" (PyTorch's
    xavier_normal_ with gain sqrt(2), twice the variance, as the public Neural
    Statistician initialises its linear and conv layers)."""
    if name not in KERNEL_INITIALIZERS:
        raise ValueError(f"unknown kernel_initializer {name!r}; valid: {', '.join(KERNEL_INITIALIZERS)}")
    _KERNEL_INITIALIZER.append(name)
    try:
        yield
    finally:
        _KERNEL_INITIALIZER.pop()


def new_kernel_initializer():
    """A fresh initializer of the kind `kernel_initializer` set (one per layer)."""
    if _KERNEL_INITIALIZER[-1] == "xavier_normal_relu_gain":
        return keras.initializers.VarianceScaling(scale=2.0, mode="fan_avg", distribution="untruncated_normal")
    return keras.initializers.GlorotUniform()


@contextlib.contextmanager
def batch_norm_momentum(momentum: float):
    """BatchNorm layers built inside the block default to this momentum (a model sets
    it once for all its blocks; 0.99 is Keras' default, 0.9 PyTorch's)."""
    _BATCH_NORM_MOMENTUM.append(momentum)
    try:
        yield
    finally:
        _BATCH_NORM_MOMENTUM.pop()


class BatchNorm(keras.layers.Layer):
    """Batch norm over every leading dim of [..., features], for any rank, as one fused op.

    Same variables, defaults and statistics as keras.layers.BatchNormalization
    (gamma, beta, moving mean and variance; momentum 0.99 unless `batch_norm_momentum`
    says otherwise, epsilon 1e-3), but:
    - it takes any rank (Keras' layer fixes the rank at its first call; our feature
      tensors are [B, T, F] in training and [K, B, F] in evaluation), and
    - it runs TF's FusedBatchNormV3 on the compute dtype with float32 statistics.
      Keras 3 casts bfloat16 inputs to float32 and normalises with a dozen
      elementwise ops, which showed up in op profiles of the bfloat16 step.
    """

    def __init__(self, momentum: float | None = None, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum = _BATCH_NORM_MOMENTUM[-1] if momentum is None else momentum
        self.epsilon = epsilon

    def build(self, input_shape):
        shape = (input_shape[-1],)
        # float32 whatever the policy: the fused op takes float32 scale and statistics.
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta", autocast=False)
        # Per-replica statistics under tf.distribute: each replica updates its own copy
        # without synchronising; reading them outside a replica (evaluation,
        # checkpoints) gives the replicas' mean.
        self.moving_mean = self._moving_statistic(shape, "zeros", "moving_mean")
        self.moving_variance = self._moving_statistic(shape, "ones", "moving_variance")

    def _moving_statistic(self, shape, initializer, name):
        return keras.Variable(
            initializer,
            shape=shape,
            dtype="float32",
            trainable=False,
            autocast=False,
            aggregation="mean",
            synchronization="on_read",
            name=name,
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


def dense(units: int, **kwargs) -> keras.layers.Dense:
    """Dense layer with the initializer `kernel_initializer` set; on [..., 4, 4, C] maps
    it is a 1x1 conv."""
    return keras.layers.Dense(units, kernel_initializer=new_kernel_initializer(), **kwargs)


def image_elu() -> keras.layers.Layer:
    """ELU for the conv stacks' image-sized activations, computed in float32 whatever the
    policy: on CPUs TF's bfloat16 Elu and EluGrad kernels are slower than the float32
    ones and the casts around them together (README "Speed" has the profile)."""
    return keras.layers.Activation("elu", dtype="float32")


def conv_bn_elu(channels: int, *, kernel: int = 3, strides: int = 1, padding: str = "same", transpose=False) -> list:
    """[conv without bias, batch norm, ELU], for a Chain."""
    if transpose:  # The public Neural Statistician leaves transposed convs at PyTorch's default.
        conv = keras.layers.Conv2DTranspose(channels, kernel, strides=strides, padding=padding, use_bias=False)
    else:
        conv = keras.layers.Conv2D(
            channels,
            kernel,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_initializer=new_kernel_initializer(),
        )
    return [conv, BatchNorm(), image_elu()]


class ConvEncoder(keras.layers.Layer):
    """Strided conv stack: [N, 28, 28, 1] -> [N, features], the last feature map
    (`output_map_shape`) flattened.

    Each stage is `convs_per_stage` 3x3 convs (the last one stride 2) with batch norm
    and ELU, so 28 -> 14 -> 7 -> 4 for three stages.
    """

    def __init__(self, channels=(32, 64, 128), convs_per_stage: int = 1, batch_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        size = 28
        for _ in channels:
            size = (size + 1) // 2
        self.output_size = size * size * channels[-1]
        self.output_map_shape = (size, size, channels[-1])
        blocks = []
        for c in channels:
            for i in range(convs_per_stage):
                stride = 2 if i == convs_per_stage - 1 else 1
                blocks.append(
                    keras.layers.Conv2D(
                        c,
                        3,
                        strides=stride,
                        padding="same",
                        use_bias=not batch_norm,
                        kernel_initializer=new_kernel_initializer(),
                    )
                )
                if batch_norm:
                    blocks.append(BatchNorm())
                blocks.append(image_elu())
        blocks.append(keras.layers.Flatten())
        self.net = Chain(blocks)

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.net(images, training=training)


class UpConvDecoder(keras.layers.Layer):
    """Code -> Bernoulli logits [N, 28, 28, 1] by 2x2 transposed convs, 4 -> 8 -> 16 -> 28.

    A dense stem maps a code [N, D] to [4, 4, channels[0]] (or, with `dense_stem`
    False, the input is such a map already); each stage is `convs_per_stage` 3x3 convs
    and a 2x2 stride-2 transposed conv; the last stage's last 3x3 conv is 'valid'
    (16 -> 14) so the final transposed conv lands on 28. A 1x1 conv gives the logits.
    Batch norm and ELU after every layer but the last (the Neural Statistician's
    Omniglot decoder).
    """

    def __init__(
        self,
        channels=(256, 128, 64),
        convs_per_stage: int = 2,
        stem_batch_norm: bool = True,
        dense_stem: bool = True,
        **kwargs,
    ):
        """stem_batch_norm: batch norm and ELU after the dense stem (True), or the dense
        layer's output reshaped as it is (False, the public implementation)."""
        super().__init__(**kwargs)
        if len(channels) != 3 or convs_per_stage < 1:
            raise ValueError(f"UpConvDecoder needs 3 stage channels and convs_per_stage >= 1, got {channels}")
        blocks = []
        if dense_stem:
            if stem_batch_norm:
                blocks = [dense(4 * 4 * channels[0], use_bias=False), BatchNorm(), image_elu()]
            else:
                blocks = [dense(4 * 4 * channels[0])]
            blocks.append(keras.layers.Reshape((4, 4, channels[0])))
        for stage, c in enumerate(channels):
            for i in range(convs_per_stage):
                last = stage == len(channels) - 1 and i == convs_per_stage - 1
                blocks += conv_bn_elu(c, padding="valid" if last else "same")
            blocks += conv_bn_elu(c, kernel=2, strides=2, transpose=True)
        blocks.append(keras.layers.Conv2D(1, 1, kernel_initializer=new_kernel_initializer(), dtype=OUTPUT_DTYPE))
        self.net = Chain(blocks)

    def call(self, code: tf.Tensor, training: bool = False) -> tf.Tensor:
        """code: [N, D] (or [N, 4, 4, channels[0]] without the dense stem) -> logits [N, 28, 28, 1]."""
        return self.net(code, training=training)


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


def standard_normal(size: int) -> tfd.Distribution:
    """N(0, I) over `size` dims, float32, event shape [size]."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros([size], tf.float32))


def causal_mask(num_items) -> tf.Tensor:
    """Support visibility for scoring every item of an episode given the ones before it.

    Slot 0 is a model's learned "nothing yet" slot and slots 1..T hold the items, so
    position t (0-based) sees slots 0..t: bool [T, T + 1], True = visible.
    """
    return tf.sequence_mask(tf.range(num_items) + 1, num_items + 1)


def full_mask(num_slots) -> tf.Tensor:
    """One query that sees every support slot: bool [1, num_slots]."""
    return tf.ones(tf.stack([1, num_slots]), tf.bool)
