"""The Neural Statistician (Edwards & Storkey 2017), Omniglot model.

Generative story for a set D = {x_1..x_T} of drawings of one character:
  c ~ p(c) = N(0, I)                       (the character, 512 dims)
  z_i ~ p(z_i | c)  (L stochastic layers: p(z_i1 | c) p(z_i2 | c, z_i1) ...)
  x_i ~ Bernoulli(decoder(z_i, c)).
Recognition: a shared conv encoder h_i = f(x_i); the statistic network mean-pools
item features into q(c | D) (order-free by construction); q(z_i | h_i, c).

Bound (Eq. 3 of [1]), per set:
  L(D) = sum_i E_q [log p(x_i | z_i, c) - KL(q(z_i | h_i, c) || p(z_i | c))]
         - KL(q(c | D) || p(c)).
Conditional density for the per-shot table (SPEC §3): c is drawn from q(c | x_<t)
jointly with z inside the K importance samples,
  log p(x_t | x_<t) ~= log 1/K sum_k p(x_t | z_k, c_k) p(z_k | c_k) / q(z_k | x_t, c_k),
  c_k ~ q(c | x_<t) (p(c) when t = 1), z_k ~ q(z | x_t, c_k).
Joint density of a set (SPEC §3's set-level anchors), a bound that tightens with K:
  log p(D) ~= log 1/K sum_k p(c_k) prod_i p(x_i | z_ik, c_k) p(z_ik | c_k) / q(z_ik | x_i, c_k)
              / q(c_k | D),  c_k ~ q(c | D), z_ik ~ q(z | x_i, c_k).

#### References
[1] Edwards & Storkey. Towards a Neural Statistician. ICLR 2017. arXiv:1606.02185
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from oneshot_tf.models import base, layers

tfd = tfp.distributions


class ResidualBlock(keras.layers.Layer):
    """x + f(x) with f = `num_layers` x [Dense + batch norm] (ELU between), then ELU.

    Any leading dims: [..., width] -> [..., width].
    """

    def __init__(self, width: int, num_layers: int = 3, **kwargs):
        super().__init__(**kwargs)
        chain = []
        for i in range(num_layers):
            chain += [layers.dense(width, use_bias=False), layers.BatchNorm()]
            if i < num_layers - 1:
                chain.append(keras.layers.Activation("elu"))
        self.net = layers.Chain(chain)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return tf.nn.elu(x + self.net(x, training=training))


class NormalizedLogVarianceHead(keras.layers.Layer):
    """The public implementation's Gaussian head: Dense(2 * size), one batch norm over
    all 2 * size outputs together (a single scale and shift, its `bn_params`), then
    mean and log-variance. [..., F] -> batch shape [...], event [size], float32."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.dense = layers.dense(2 * size, dtype=layers.OUTPUT_DTYPE)
        self.norm = layers.BatchNorm(momentum=0.99, dtype=layers.OUTPUT_DTYPE)

    def call(self, features: tf.Tensor, training: bool = False) -> tfd.Distribution:
        params = tf.cast(self.dense(features), tf.float32)
        normalized = self.norm(params[..., None], training=training)[..., 0]
        loc, log_variance = tf.split(normalized, 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.exp(0.5 * log_variance))


GAUSSIAN_HEADS = ("softplus", "normalized_log_variance")


def _gaussian_head(kind: str, size: int) -> keras.layers.Layer:
    if kind == "softplus":
        return layers.NormalHead(size)
    if kind == "normalized_log_variance":
        return NormalizedLogVarianceHead(size)
    raise ValueError(f"unknown gaussian_head {kind!r}; valid: {', '.join(GAUSSIAN_HEADS)}")


class ConditionalGaussian(keras.layers.Layer):
    """Gaussian over `size` dims given several inputs: sum of Dense(width) of each
    input, batch norm (if `input_batch_norm`), ELU, a ResidualBlock, then a Gaussian head.

    Inputs share leading dims [...]; returns batch shape [...], event [size].
    """

    def __init__(
        self,
        width: int,
        size: int,
        num_inputs: int,
        *,
        residual_layers: int = 3,
        head: str = "softplus",
        input_batch_norm: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projections = [layers.dense(width) for _ in range(num_inputs)]
        self.norm = layers.BatchNorm() if input_batch_norm else keras.layers.Identity()
        self.residual = ResidualBlock(width, residual_layers)
        self.head = _gaussian_head(head, size)

    def call(self, inputs: list, training: bool = False) -> tfd.Distribution:
        if len(inputs) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} inputs, got {len(inputs)}")
        # `+` broadcasts, so inputs may differ in leading dims ([B, T, F] with [K, B, T, C]).
        hidden = self.projections[0](inputs[0])
        for project, x in zip(self.projections[1:], inputs[1:]):
            hidden = hidden + project(x)
        hidden = tf.nn.elu(self.norm(hidden, training=training))
        return self.head(self.residual(hidden, training=training), training=training)


class StatisticNetwork(keras.layers.Layer):
    """q(c | D): per-item Dense + BN + ELU, mean over the set, MLP, Gaussian head.

    For an empty set it returns the prior p(c) = N(0, I).
    """

    def __init__(self, width: int, context_size: int, num_post_layers: int = 2, head: str = "softplus", **kwargs):
        super().__init__(**kwargs)
        self.context_size = context_size
        self.item = layers.Chain(
            [layers.dense(width, use_bias=False), layers.BatchNorm(), keras.layers.Activation("elu")]
        )
        post = []
        for _ in range(num_post_layers):
            post += [layers.dense(width, use_bias=False), layers.BatchNorm()]
            post.append(keras.layers.Activation("elu"))
        self.post = layers.Chain(post)
        self.head = _gaussian_head(head, context_size)

    def item_features(self, features: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Encoder features [..., F] -> per-item features [..., width], to be pooled."""
        return self.item(features, training=training)

    def from_pooled(self, pooled: tf.Tensor, count: tf.Tensor, training: bool = False) -> tfd.Distribution:
        """q(c | D) from the mean of item features `pooled` [..., width] over `count` items.

        count: [...] or scalar, items in each set; where it is 0 the result is p(c).
        """
        posterior = self.head(self.post(pooled, training=training), training=training)
        empty = tf.broadcast_to(tf.equal(count, 0), tf.shape(pooled)[:-1])[..., None]
        loc = tf.where(empty, 0.0, posterior.mean())
        scale = tf.where(empty, 1.0, posterior.stddev())
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)

    def call(self, features: tf.Tensor, training: bool = False) -> tfd.Distribution:
        """features: [batch, set_size, F] -> q(c | D), batch shape [batch], event [context_size]."""
        items = tf.cast(self.item_features(features, training), tf.float32)
        count = tf.shape(items)[1]
        pooled = tf.reduce_sum(items, axis=1) / tf.cast(tf.maximum(count, 1), tf.float32)
        return self.from_pooled(pooled, count, training)


class NeuralStatistician(base.FewShotModel):
    """Shared conv encoder, statistic network, L-layer latent z, up-conv decoder."""

    classification_rules = ("kl", "likelihood")
    estimator_note = (
        "the context c is sampled from q(c | x_<t) jointly with z inside the same K samples (p(c) at t = 1)"
    )
    one_pass_scoring = True
    separable_elbo = True
    joint_set_scoring = True

    def __init__(
        self,
        *,  # Makes all args keyword only.
        encoder_channels=(64, 128, 256),
        convs_per_stage: int = 3,
        decoder_channels=(256, 128, 64),
        decoder_convs_per_stage: int = 2,
        hidden_size: int = 256,
        context_size: int = 512,
        latent_size: int = 16,
        num_latent_layers: int = 1,
        residual_layers: int = 3,
        gaussian_head: str = "softplus",
        batch_norm_momentum: float = 0.99,
        kernel_initializer: str = "glorot_uniform",
        hidden_batch_norm: bool = True,
        **kwargs,
    ):
        """Builds the networks.

        Args:
          encoder_channels, convs_per_stage: ConvEncoder stages (3 x 3 convs, 28 -> 4).
          decoder_channels, decoder_convs_per_stage: UpConvDecoder stages.
          hidden_size: width of the statistic network and the z networks.
          context_size: dims of c.
          latent_size: dims of each z layer.
          num_latent_layers: L, stochastic layers of z.
          residual_layers: Dense + BN layers in each residual block of the z networks.
          gaussian_head: how q(c | D), q(z | x, c) and p(z | c) map features to a
            Gaussian: "softplus" (layers.NormalHead) or "normalized_log_variance" (the
            public implementation's NormalizedLogVarianceHead).
          batch_norm_momentum: of every batch norm's moving averages (0.99 is Keras'
            default; the public implementation has PyTorch's, 0.9, and 0.99 in its heads).
          kernel_initializer: of the dense and conv layers (layers.KERNEL_INITIALIZERS).
          hidden_batch_norm: batch norm before the ELU of the summed input projections
            of the z networks and of the decoder, and after the decoder's dense layer
            into 4 x 4 (with an ELU). The public implementation has none of the three
            (False): ELU straight after the projections, the dense layer's output
            reshaped as it is.
        """
        super().__init__(**kwargs)
        if num_latent_layers < 1:
            raise ValueError(f"num_latent_layers must be >= 1, got {num_latent_layers}")
        self.context_size = context_size
        self.num_latent_layers = num_latent_layers
        with layers.batch_norm_momentum(batch_norm_momentum), layers.kernel_initializer(kernel_initializer):
            self.encoder = layers.ConvEncoder(encoder_channels, convs_per_stage=convs_per_stage)
            self.statistic = StatisticNetwork(hidden_size, context_size, head=gaussian_head)
            z_network = dict(residual_layers=residual_layers, head=gaussian_head, input_batch_norm=hidden_batch_norm)
            # q(z_l | h, c, z_{l-1}) and p(z_l | c, z_{l-1}); layer 1 has no z_{l-1}.
            self.posteriors = [
                ConditionalGaussian(hidden_size, latent_size, 2 + (layer > 0), **z_network)
                for layer in range(num_latent_layers)
            ]
            self.priors = [
                ConditionalGaussian(hidden_size, latent_size, 1 + (layer > 0), **z_network)
                for layer in range(num_latent_layers)
            ]
            self.decoder_z = layers.dense(hidden_size)
            self.decoder_c = layers.dense(hidden_size)
            self.decoder_norm = layers.BatchNorm() if hidden_batch_norm else keras.layers.Identity()
            self.decoder = layers.UpConvDecoder(
                decoder_channels, decoder_convs_per_stage, stem_batch_norm=hidden_batch_norm
            )

    def warm_start_additions(self) -> list:
        """The z networks of layers 2..L: a one-layer model's export starts a deeper one
        (train.init_from); the new networks keep their initialisation."""
        return self.posteriors[1:] + self.priors[1:]

    def warm_start_widened(self) -> list:
        """The decoder's kernel over [z_1, ..., z_L]: a one-layer export has z_1's rows
        only, so the decoder starts blind to layers 2..L."""
        return [self.decoder_z.kernel] if self.num_latent_layers > 1 else []

    def _encode(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        """[..., 28, 28, 1] with 1 or 2 leading dims -> features [..., F]."""
        return layers.encode_items(self.encoder, images, self.encoder.output_size, training)

    def context_posterior(self, sets: tf.Tensor, training: bool = False) -> tfd.Distribution:
        """q(c | D) for sets [batch, set_size, 28, 28, 1]: batch shape [batch], event [context]."""
        base.check_images(sets, 5, "sets")
        return self.statistic(self._encode(sets, training), training=training)

    def _latent_layers(self, features, context, seed, training: bool):
        """Yields, layer by layer, (q(z_l | h, c, z_{l-1}), p(z_l | c, z_{l-1}), z_l ~ q)."""
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, self.num_latent_layers))
        previous = []
        for posterior_net, prior_net, layer_seed in zip(self.posteriors, self.priors, seeds):
            posterior = posterior_net([features, context, *previous], training=training)
            prior = prior_net([context, *previous], training=training)
            z = posterior.sample(seed=layer_seed)
            yield posterior, prior, z
            previous = [z]

    def _latents(self, features, context, seed, training: bool):
        """z ~ q(z | h, c) layer by layer; returns (z concat [..., L*latent], log q - log p)."""
        latents, kl = [], 0.0
        for posterior, prior, z in self._latent_layers(features, context, seed, training):
            kl += posterior.log_prob(z) - prior.log_prob(z)
            latents.append(z)
        return tf.concat(latents, axis=-1), kl

    def latent_kl_by_layer(self, sets: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """How many nats each layer of z carries about its drawing: KL(q(z_l | h, c, z_{l-1})
        || p(z_l | c, z_{l-1})) in closed form, given one c ~ q(c | D) and z_{l-1} ~ q.

        sets: [batch, T, 28, 28, 1] -> float32 [batch, T, L].
        """
        base.check_images(sets, 5, "sets")
        c_seed, z_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        features = self._encode(sets, False)
        features, context = self._per_item(features, self.statistic(features).sample(seed=c_seed))
        by_layer = self._latent_layers(features, context, z_seed, training=False)
        return tf.stack([tfd.kl_divergence(posterior, prior) for posterior, prior, _ in by_layer], axis=-1)

    def _per_item(self, features, context) -> tuple:
        """Encoder features [batch, T, F] and one context per set [..., batch, C], both
        broadcast to every item: ([..., batch, T, F], [..., batch, T, C])."""
        items_shape = tf.concat([tf.shape(context)[:-1], tf.shape(features)[1:2]], 0)  # [..., batch, T]
        items_context = tf.broadcast_to(context[..., None, :], tf.concat([items_shape, [self.context_size]], 0))
        return tf.broadcast_to(features, tf.concat([items_shape, tf.shape(features)[-1:]], 0)), items_context

    def _prior_latents(self, context, seed, training: bool = False) -> tf.Tensor:
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, self.num_latent_layers))
        latents = []
        for prior_net, layer_seed in zip(self.priors, seeds):
            latents.append(prior_net([context, *latents[-1:]], training=training).sample(seed=layer_seed))
        return tf.concat(latents, axis=-1)

    def _likelihood(self, latents: tf.Tensor, context: tf.Tensor, training: bool):
        """p(x | z, c) for latents [..., L*latent] and context [..., context]."""
        hidden = tf.nn.elu(self.decoder_norm(self.decoder_z(latents) + self.decoder_c(context), training=training))
        num_leading = latents.shape.rank - 1
        logits = layers.batch_apply(lambda h: self.decoder(h, training=training), hidden, num_leading)
        return layers.bernoulli_images(logits)

    def elbo(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
        log_likelihood, kl = self.elbo_terms(batch, seed, training)
        return log_likelihood - kl

    def elbo_terms(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tuple:
        base.check_images(batch, 5, "batch")
        c_seed, z_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        features = self._encode(batch, training)  # [B, T, F]
        q_c = self.statistic(features, training=training)
        context = q_c.sample(seed=c_seed)  # [B, C]
        log_likelihood, kl_z = self._items_given_context(features, batch, context, z_seed, training)  # [B, T]
        kl_c = tfd.kl_divergence(q_c, layers.standard_normal(self.context_size))
        return tf.reduce_sum(log_likelihood, axis=1), tf.reduce_sum(kl_z, axis=1) + kl_c

    def _items_given_context(self, features, sets, context, seed, training: bool) -> tuple:
        """Every item's log p(x_i | z_i, c) and log q(z_i | h_i, c) - log p(z_i | c), z_i ~ q.

        Args:
          features: encoder features [batch, T, F].
          sets: [batch, T, 28, 28, 1].
          context: c [..., batch, C], one per set (leading sample dims allowed).

        Returns:
          Two float32 [..., batch, T].
        """
        features, items_context = self._per_item(features, context)
        latents, log_q_minus_log_p = self._latents(features, items_context, seed, training)
        return self._likelihood(latents, items_context, training).log_prob(sets), log_q_minus_log_p

    def set_log_weights(self, sets: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        """c_k ~ q(c | X), z_ik ~ q(z | h_i, c_k): log p(c_k) - log q(c_k | X)
        + sum_i [log p(x_i | z_ik, c_k) + log p(z_ik | c_k) - log q(z_ik | h_i, c_k)], [K, batch]."""
        base.check_images(sets, 5, "sets")
        c_seed, z_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        features = self._encode(sets, False)
        q_c = self.statistic(features)
        context = q_c.sample(num_samples, seed=c_seed)  # [K, B, C]
        log_likelihood, log_q_minus_log_p = self._items_given_context(features, sets, context, z_seed, False)
        log_prior_ratio = layers.standard_normal(self.context_size).log_prob(context) - q_c.log_prob(context)
        return tf.reduce_sum(log_likelihood - log_q_minus_log_p, axis=-1) + log_prior_ratio

    def _log_weights_given_context(self, features, query, q_c, num_samples, seed) -> tf.Tensor:
        """Joint importance weights: c_k ~ q_c, z_k ~ q(z | h, c_k). Shapes [K, ...]."""
        c_seed, z_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        context = q_c.sample(num_samples, seed=c_seed)  # [K, ..., C]
        features = tf.broadcast_to(features, tf.concat([tf.shape(context)[:-1], tf.shape(features)[-1:]], 0))
        latents, log_q_minus_log_p = self._latents(features, context, z_seed, training=False)
        return self._likelihood(latents, context, training=False).log_prob(query) - log_q_minus_log_p

    def log_weights(self, support: tf.Tensor, query: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        q_c = self.statistic(self._encode(support, False))  # p(c) when shots = 0
        return self._log_weights_given_context(self._encode(query, False), query, q_c, num_samples, seed)

    def prefix_context_posteriors(self, episodes: tf.Tensor) -> tuple:
        """q(c | x_<t) for every t in one pass, from running means of item features.

        Args:
          episodes: [batch, T, 28, 28, 1].

        Returns:
          (q_c with batch shape [batch, T] (p(c) at t = 1), encoder features [batch, T, F]).
        """
        base.check_images(episodes, 5, "episodes")
        features = self._encode(episodes, False)
        items = tf.cast(self.statistic.item_features(features), tf.float32)  # [B, T, W]
        count = tf.range(tf.shape(items)[1])
        pooled = tf.cumsum(items, axis=1, exclusive=True) / tf.cast(tf.maximum(count, 1), tf.float32)[None, :, None]
        return self.statistic.from_pooled(pooled, count[None, :]), features

    def per_shot_log_weights(self, episodes: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        q_c, features = self.prefix_context_posteriors(episodes)
        return self._log_weights_given_context(features, episodes, q_c, num_samples, seed)

    def sample_probs(self, support: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        c_seed, z_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        context = self.statistic(self._encode(support, False)).sample(seed=c_seed)
        latents = self._prior_latents(context, z_seed)
        return self._likelihood(latents, context, training=False).mean()
