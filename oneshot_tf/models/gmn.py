"""Generative Matching Networks (Bartunov & Vetrov 2018).

For an episode x_1..x_T, item t is generated given the items before it,
X_<t = {x_1..x_{t-1}}, plus a learned pseudo-input x_0 (so t = 1 conditions on
x_0 alone and 0 shots work):
  z_t ~ p(z | X_<t)            prior: a controller reading X_<t (1 attention step)
  x_t ~ p(x | z_t, X_<t)       generator: decoder(z_t, h), h read by a controller
                               whose input is z_t (several attention steps)
  q(z_t | x_t, X_<t)           recognition: a controller whose input is the
                               embedding of x_t (several attention steps).
Each controller matches a query against the support with the kernel
  K(x_i, s) = softmax_i(beta * cos(f'(s), f(x_i))),  read r = sum_i K(x_i, s) g(x_i),
and updates its state s with a GRU over several steps. `conditioning="mean"` is the
paper's ablation: uniform weights over the support (Neural-Statistician-like).

Objective: sum_t ELBO(x_t | X_<t) =
  sum_t E_q [log p(x_t | z_t, X_<t) + log p(z_t | X_<t) - log q(z_t | x_t, X_<t)].
All T positions are computed in one pass: the support of position t is
{x_0, x_1..x_{t-1}}, a causal mask over the T + 1 support slots.

#### References
[1] Bartunov & Vetrov. Few-shot Generative Modelling with Generative Matching
    Networks. AISTATS 2018. arXiv:1612.02192
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from oneshot_tf.models import base, layers

tfd = tfp.distributions

CONDITIONINGS = ("attention", "mean")


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
        self.logits = keras.layers.Conv2D(1, 3, padding="same", dtype=layers.OUTPUT_DTYPE)

    def call(self, code: tf.Tensor, training: bool = False) -> tf.Tensor:
        del training
        x = self.reshape(self.project(code))
        for (conv_a, conv_b), up in zip(self.residuals, self.ups):
            x = tf.nn.elu(x + conv_b(conv_a(x)))
            x = up(x)
        return self.logits(x)


def _per_set_matmul(x: tf.Tensor, y: tf.Tensor, transpose_y: bool = False) -> tf.Tensor:
    """x [..., B, Q, I] times y [B, I, O] (or [B, O, I] with transpose_y) -> [..., B, Q, O].

    The leading dims `...` (e.g. K samples) are folded into Q so that the product is one
    batch matmul over B with equal batch dims: TF 2.21's oneDNN batch matmul, given
    batch dims to broadcast and B = 1, writes out of bounds (a crash, or a corrupt heap
    that crashes later), and einsum lowers to it.
    """
    rank = x.shape.rank
    if rank == 3:
        return tf.linalg.matmul(x, y, transpose_b=transpose_y)
    shape = tf.shape(x)
    leading = list(range(rank - 3))
    moved = tf.transpose(x, [rank - 3, *leading, rank - 2, rank - 1])  # [B, ..., Q, I]
    product = tf.linalg.matmul(tf.reshape(moved, [shape[rank - 3], -1, shape[-1]]), y, transpose_b=transpose_y)
    out_size = tf.shape(y)[-2 if transpose_y else -1]
    product = tf.reshape(
        product, tf.concat([shape[rank - 3 : rank - 2], shape[: rank - 3], shape[-2:-1], [out_size]], 0)
    )
    return tf.transpose(product, [*[i + 1 for i in leading], 0, rank - 2, rank - 1])


class MatchingController(keras.layers.Layer):
    """Reads a support set by repeated matching attention; returns its final state.

    inputs [..., B, Q, I], support embeddings [B, J, E] and a mask [Q, J] (True =
    visible) -> state [..., B, Q, units]. Leading dims `...` (e.g. K samples)
    broadcast against the support.
    """

    def __init__(self, units: int, key_size: int, num_steps: int, conditioning: str = "attention", **kwargs):
        super().__init__(**kwargs)
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: {', '.join(CONDITIONINGS)}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.conditioning = conditioning
        self.initial = keras.layers.Dense(units, activation="tanh")
        self.query = keras.layers.Dense(key_size)
        self.key = keras.layers.Dense(key_size)
        self.value = keras.layers.Dense(units)
        self.cell = GruCell(units)
        # beta = exp(log_strength), the sharpness of the cosine kernel; e^2 ~ 7.4 at start.
        self.log_strength = self.add_weight(shape=(), initializer=keras.initializers.Constant(2.0), name="log_strength")

    def build(self, input_shape):
        del input_shape  # The sub-layers build on their first call; nothing else to create.

    def call(self, inputs: tf.Tensor, support: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        keys = tf.math.l2_normalize(tf.cast(self.key(support), tf.float32), axis=-1)  # [B, J, D]
        values = self.value(support)  # [B, J, U]
        state = self.initial(inputs)
        for _ in range(self.num_steps):
            if self.conditioning == "attention":
                queries = tf.math.l2_normalize(tf.cast(self.query(state), tf.float32), axis=-1)
                cosine = _per_set_matmul(queries, keys, transpose_y=True)  # [..., B, Q, J]
                logits = tf.exp(tf.cast(self.log_strength, tf.float32)) * cosine
            else:
                logits = tf.zeros(tf.concat([tf.shape(state)[:-1], tf.shape(keys)[1:2]], axis=0))
            logits = tf.where(mask, logits, -1e9)
            weights = tf.cast(tf.nn.softmax(logits, axis=-1), values.dtype)
            read = _per_set_matmul(weights, values)  # [..., B, Q, U]
            state = self.cell(tf.concat([read, tf.cast(inputs, read.dtype)], axis=-1), state)
        return state


class GenerativeMatchingNetwork(base.FewShotModel):
    """GMN with an FC or conv (ResNet-style) embedding and generator."""

    one_pass_scoring = True
    separable_elbo = True

    def __init__(
        self,
        *,  # Makes all args keyword only.
        architecture: str = "conv",
        hidden_sizes=(32, 64, 128),
        embedding_size: int = 256,
        latent_size: int = 50,
        controller_size: int = 200,
        key_size: int = 128,
        prior_steps: int = 1,
        recognition_steps: int = 4,
        conditioning: str = "attention",
        **kwargs,
    ):
        """Builds the networks.

        Args:
          architecture: `conv` (ResNet-style 28 -> 13 -> 6 -> 3 and mirror) or `fc`.
          hidden_sizes: conv channels per stage, or FC hidden widths.
          embedding_size: size of the support embeddings.
          latent_size: dims of z.
          controller_size: state size of every controller.
          key_size: size of the matching keys.
          prior_steps: attention steps of the prior's controller (paper: 1).
          recognition_steps: attention steps of the recognition and generator
            controllers (paper: 4).
          conditioning: `attention`, or `mean` (the ablation).
        """
        super().__init__(**kwargs)
        if architecture == "conv":
            self.encoder = ResidualConvEncoder(hidden_sizes)
            self.decoder = ResidualConvDecoder(tuple(reversed(hidden_sizes)))
        elif architecture == "fc":
            self.encoder = layers.FcEncoder(hidden_sizes, activation="elu")
            self.decoder = layers.FcDecoder(tuple(reversed(hidden_sizes)), activation="elu")
        else:
            raise ValueError(f"unknown architecture {architecture!r}; valid: conv, fc")
        self.feature_size = self.encoder.output_size if architecture == "conv" else hidden_sizes[-1]
        self.embed = keras.layers.Dense(embedding_size, activation="elu")
        self.embedding_size = embedding_size
        self.latent_size = latent_size
        controller = dict(units=controller_size, key_size=key_size, conditioning=conditioning)
        self.prior_controller = MatchingController(num_steps=prior_steps, **controller)
        self.recognition_controller = MatchingController(num_steps=recognition_steps, **controller)
        self.generator_controller = MatchingController(num_steps=recognition_steps, **controller)
        self.prior_head = layers.NormalHead(latent_size)
        self.posterior_head = layers.NormalHead(latent_size)
        # The learned pseudo-input x_0's embedding: always in the support, so 0 shots work.
        self.pseudo_input = self.add_weight(shape=(embedding_size,), initializer="random_normal", name="pseudo_input")

    def _embed(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        """[B, N, 28, 28, 1] -> [B, N, embedding]."""
        return self.embed(layers.encode_items(self.encoder, images, self.feature_size, training))

    def _support(self, embeddings: tf.Tensor) -> tf.Tensor:
        """Prepends the pseudo-input: [B, N, E] -> [B, N + 1, E]."""
        pseudo = tf.cast(self.pseudo_input, embeddings.dtype)
        pseudo = tf.broadcast_to(pseudo, tf.concat([tf.shape(embeddings)[:1], [1, self.embedding_size]], axis=0))
        return tf.concat([pseudo, embeddings], axis=1)

    def _open_support(self, support: tf.Tensor) -> tuple:
        """Support images [B, S, ...] -> (slots [B, S + 1, E] with the pseudo-input, mask [1, S + 1])."""
        slots = self._support(self._embed(support, False))
        return slots, layers.full_mask(tf.shape(slots)[1])

    def _prior(self, support: tf.Tensor, mask: tf.Tensor, num_queries) -> tfd.Distribution:
        """p(z | support slots [B, J]) for Q query positions under mask [Q, J]: batch [B, Q]."""
        ones = tf.ones(tf.stack([tf.shape(support)[0], num_queries, 1]), support.dtype)
        return self.prior_head(self.prior_controller(ones, support, mask))

    def _term_parts(self, support, mask, query_embeddings, query_images, draw_z, training) -> tuple:
        """Queries [B, Q] against support slots [B, J] under mask [Q, J] -> (log p(x | z, support),
        log q(z | x, support) - log p(z | support)), each [K, B, Q]; the log-weight is their difference.

        draw_z: maps the posterior (batch [B, Q]) to samples z [K, B, Q, latent].
        """
        prior = self._prior(support, mask, tf.shape(query_embeddings)[1])
        posterior = self.posterior_head(self.recognition_controller(query_embeddings, support, mask))
        z = draw_z(posterior)
        read = self.generator_controller(z, support, mask)  # [K, B, Q, U]
        code = tf.concat([tf.cast(z, read.dtype), read], axis=-1)
        logits = layers.batch_apply(lambda c: self.decoder(c, training=training), code, num_dims=3)
        likelihood = layers.bernoulli_images(logits)
        return likelihood.log_prob(query_images), posterior.log_prob(z) - prior.log_prob(z)

    def _causal_parts(self, episodes: tf.Tensor, draw_z, training: bool) -> tuple:
        """All positions in one pass: [B, T, 28, 28, 1] -> `_term_parts` [K, B, T] each."""
        embeddings = self._embed(episodes, training)
        # Position t sees the pseudo-input (slot 0) and the items before it.
        mask = layers.causal_mask(tf.shape(episodes)[1])
        return self._term_parts(self._support(embeddings), mask, embeddings, episodes, draw_z, training)

    def _causal_terms(self, episodes: tf.Tensor, draw_z, training: bool) -> tf.Tensor:
        """All positions in one pass: [B, T, 28, 28, 1] -> log-weights [K, B, T]."""
        log_likelihood, log_ratio = self._causal_parts(episodes, draw_z, training)
        return log_likelihood - log_ratio

    def _set_terms(self, support: tf.Tensor, query: tf.Tensor, draw_z) -> tf.Tensor:
        """One query per support set (no mask): support [B, S], query [B] -> [K, B]."""
        slots, mask = self._open_support(support)
        query = query[:, None]
        log_likelihood, log_ratio = self._term_parts(slots, mask, self._embed(query, False), query, draw_z, False)
        return (log_likelihood - log_ratio)[..., 0]

    def elbo(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
        base.check_images(batch, 5, "batch")
        terms = self._causal_terms(batch, lambda q: q.sample(1, seed=seed), training)
        return tf.reduce_sum(terms[0], axis=1)

    def elbo_terms(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tuple:
        """(log p(x_t | z_t, x_<t), log q(z_t | x_t, x_<t) - log p(z_t | x_<t)) summed over t,
        one z sample per item (the KL estimated at it, as in `elbo`): float32 [batch] each."""
        base.check_images(batch, 5, "batch")
        log_likelihood, log_ratio = self._causal_parts(batch, lambda q: q.sample(1, seed=seed), training)
        return tf.reduce_sum(log_likelihood[0], axis=1), tf.reduce_sum(log_ratio[0], axis=1)

    def per_shot_log_weights(self, episodes: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        base.check_images(episodes, 5, "episodes")
        return self._causal_terms(episodes, lambda q: q.sample(num_samples, seed=seed), training=False)

    def log_weights(self, support: tf.Tensor, query: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        return self._set_terms(support, query, lambda q: q.sample(num_samples, seed=seed))

    def prior(self, support: tf.Tensor) -> tfd.Distribution:
        """p(z | support) for support [B, S, 28, 28, 1] (S >= 0): batch [B], event [latent]."""
        slots, mask = self._open_support(support)
        prior = self._prior(slots, mask, 1)
        return tfd.MultivariateNormalDiag(prior.mean()[:, 0], prior.stddev()[:, 0])

    def sample_probs(self, support: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        slots, mask = self._open_support(support)
        z = self._prior(slots, mask, 1).sample(seed=seed)  # [B, 1, latent]
        read = self.generator_controller(z, slots, mask)
        logits = self.decoder(tf.concat([tf.cast(z, read.dtype), read], axis=-1)[:, 0])
        return tf.sigmoid(tf.cast(logits, tf.float32))
