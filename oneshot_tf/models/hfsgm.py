"""Hierarchical few-shot generative model (Giannone & Winther 2021), convolutional latents.

The Neural Statistician with a hierarchy over the context as well as over each item's
latent, every latent a [4, 4, channels] map (their CHFSGM, the model SCHA-VAE builds on).
Generative story for a set X = {x_1..x_T}, L layers, written top (l = L) first:
  c_L ~ N(0, I)
  z_iL ~ p(z_iL | c_L)
  for l = L-1 .. 1:
    c_l ~ p(c_l | c_{l+1}, Z_{l+1})         (pooled over the set's z_{i,l+1})
    z_il ~ p(z_il | z_{i,l+1}, c_l)
  x_i ~ Bernoulli(decoder(z_i1..z_iL, c_1..c_L)).
Recognition runs top-down in the same order from a shared conv encoder's maps h_i:
  q(c_L | X) from the mean of h_i; q(c_l | c_{l+1}, Z_{l+1}, H) pooled over the set's
  (h_i, z_{i,l+1}); q(z_il | h_i, z_{i,l+1}, c_l).
Bound per set: sum_i E log p(x_i | z_i, c) - sum_l KL(q(c_l) || p(c_l))
  - sum_i sum_l KL(q(z_il) || p(z_il)), KLs in closed form given the layers above.

Scoring (SPEC §3):
  * joint, log p(X) ~= log 1/K sum_k p(X, c_k, Z_k) / q(c_k, Z_k | X): all latents from
    the recognition model;
  * per shot, t > 1: the contexts c_1..c_L are drawn from q given x_<t (with the support
    items' own z, which are then dropped), jointly with the query's z inside the K samples,
    log p(x_t | x_<t) ~= log 1/K sum_k p(x_t | z_k, c_k) p(z_k | c_k) / q(z_k | x_t, c_k),
    the Neural Statistician's estimator; t = 1: the joint estimate of a set of one.

#### References
[1] Giannone & Winther. Hierarchical Few-Shot Generative Models. MetaLearn 2021.
[2] Giannone & Winther. SCHA-VAE: Hierarchical Context Aggregation for Few-Shot
    Generation. ICML 2022. arXiv:2110.12279
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from oneshot_tf.models import base, layers

tfd = tfp.distributions

# Items' maps are [..., T, 4, 4, C]: the item axis, counted from the end.
_ITEMS = -4
# How a set network pools its items: their mean, or SCHA-VAE's attention (AttentivePool).
AGGREGATIONS = ("mean", "attention")


def _on_maps(fn, maps: tf.Tensor) -> tf.Tensor:
    """Applies a 4-D conv op to maps [..., H, W, C] with any leading dims."""
    leading = tf.shape(maps)[:-3]
    out = fn(tf.reshape(maps, tf.concat([[-1], tf.shape(maps)[-3:]], 0)))
    return tf.reshape(out, tf.concat([leading, tf.shape(out)[1:]], 0))


def _map_normal(loc: tf.Tensor, scale: tf.Tensor) -> tfd.Distribution:
    """Independent Gaussian over [..., H, W, C] maps: event shape [H, W, C]."""
    return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=3)


def _standard_map_normal(like: tf.Tensor) -> tfd.Distribution:
    return _map_normal(tf.zeros_like(like), tf.ones_like(like))


def _pool_items(maps: tf.Tensor) -> tf.Tensor:
    """Mean over the item axis: [..., T, 4, 4, C] -> [..., 4, 4, C]."""
    return tf.reduce_mean(maps, axis=_ITEMS)


class AttentivePool(keras.layers.Layer):
    """Pools a set of maps by attention from the set's mean (SCHA-VAE's aggregation).

    Multi-head dot-product attention with one query, a 1x1 projection of the items'
    mean; keys and values are 1x1 projections of the items. Each head compares whole
    [H, W, width / heads] slices (one weight per item and head, not per position).
    Order-invariant like the mean; every item weighs the same when all are equal.

    [..., T, H, W, width] -> [..., H, W, width].
    """

    def __init__(self, width: int, heads: int = 4, **kwargs):
        super().__init__(**kwargs)
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.width, self.heads = width, heads
        self.query, self.key, self.value = (layers.dense(width) for _ in range(3))

    def _split_heads(self, maps: tf.Tensor) -> tf.Tensor:
        """[..., H, W, width] -> [..., H, W, heads, width / heads]."""
        return tf.reshape(maps, tf.concat([tf.shape(maps)[:-1], [self.heads, -1]], 0))

    def start_as_replaced(self):
        """Sets the weights so the layer computes the items' mean, the aggregation it
        replaces: keys of zero (every item weighs the same) and values equal to the items.
        The query keeps its weights, so the keys' gradients are not zero."""
        for weight in (self.key.kernel, self.key.bias, self.value.bias):
            weight.assign(tf.zeros_like(weight))
        self.value.kernel.assign(tf.eye(self.width, dtype=self.value.kernel.dtype))

    def call(self, items: tf.Tensor) -> tf.Tensor:
        query = self._split_heads(self.query(_pool_items(items)))
        keys, values = self._split_heads(self.key(items)), self._split_heads(self.value(items))
        slice_size = tf.cast(tf.reduce_prod(tf.shape(query)[-4:]) // self.heads, tf.float32)
        similarity = tf.einsum("...hwnd,...thwnd->...nt", query, keys)
        weights = tf.nn.softmax(tf.cast(similarity, tf.float32) / tf.sqrt(slice_size), axis=-1)
        pooled = tf.einsum("...nt,...thwnd->...hwnd", tf.cast(weights, values.dtype), values)
        return tf.reshape(pooled, tf.concat([tf.shape(pooled)[:-2], [self.width]], 0))


class ResidualConvBlock(keras.layers.Layer):
    """x + f(x) with f = `num_layers` x [3x3 conv + batch norm] (ELU between), then ELU.

    [..., H, W, width] -> same shape, any leading dims.
    """

    def __init__(self, width: int, num_layers: int = 3, **kwargs):
        super().__init__(**kwargs)
        chain = []
        for i in range(num_layers):
            chain += layers.conv_bn_elu(width)
            if i == num_layers - 1:
                chain.pop()  # The last ELU comes after the sum.
        self.net = layers.Chain(chain)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return tf.nn.elu(x + _on_maps(lambda m: self.net(m, training=training), x))


class MapGaussianHead(keras.layers.Layer):
    """A residual conv block, a 1x1 conv to mean and log-variance and a batch norm over
    them (the public implementation's head): [..., 4, 4, width] -> Gaussian with event
    [4, 4, size], float32.

    The log-variance is softly kept within +-MAX_LOG_VARIANCE (c tanh(v / c)): without
    it an input unlike the batches the norm's statistics came from (an untrained model,
    a sample from a tail) can give a zero or infinite scale, and NaN weights.
    """

    MAX_LOG_VARIANCE = 10.0

    def __init__(self, width: int, size: int, residual_layers: int, **kwargs):
        super().__init__(**kwargs)
        self.residual = ResidualConvBlock(width, residual_layers)
        self.params = layers.dense(2 * size, dtype=layers.OUTPUT_DTYPE)
        self.norm = layers.BatchNorm(dtype=layers.OUTPUT_DTYPE)

    def call(self, hidden: tf.Tensor, training: bool = False) -> tfd.Distribution:
        params = self.norm(self.params(self.residual(hidden, training=training)), training=training)
        loc, log_variance = tf.split(tf.cast(params, tf.float32), 2, axis=-1)
        log_variance = self.MAX_LOG_VARIANCE * tf.tanh(log_variance / self.MAX_LOG_VARIANCE)
        return _map_normal(loc, tf.exp(0.5 * log_variance))


class ItemLatentNetwork(keras.layers.Layer):
    """q(z_l | h, z_{l+1}, c_l) or p(z_l | z_{l+1}, c_l): the sum of 1x1 projections of
    the inputs, ELU, then a MapGaussianHead. Inputs are maps that broadcast against each
    other (a set's context [..., 1, 4, 4, C] against items [..., T, 4, 4, Z])."""

    def __init__(self, width: int, size: int, num_inputs: int, residual_layers: int, **kwargs):
        super().__init__(**kwargs)
        self.projections = [layers.dense(width) for _ in range(num_inputs)]
        self.head = MapGaussianHead(width, size, residual_layers)

    def call(self, inputs: list, training: bool = False) -> tfd.Distribution:
        if len(inputs) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} inputs, got {len(inputs)}")
        hidden = sum(project(x) for project, x in zip(self.projections, inputs))
        return self.head(tf.nn.elu(hidden), training=training)


class SetLatentNetwork(keras.layers.Layer):
    """A Gaussian over a set's context map from its items: the mean over the set of the
    sum of 1x1 projections of the item inputs, plus projections of the set inputs, then
    a MapGaussianHead. q(c_L | X) has items (h); p(c_l | c_{l+1}, Z_{l+1}) items (z)
    and sets (c); q(c_l | ...) items (h, z) and sets (c).

    Item inputs [..., T, 4, 4, *], set inputs [..., 4, 4, *] -> batch shape [...].
    """

    def __init__(
        self,
        width: int,
        size: int,
        num_item_inputs: int,
        num_set_inputs: int,
        residual_layers: int,
        aggregation: str = "mean",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        self.item_projections = [layers.dense(width) for _ in range(num_item_inputs)]
        self.set_projections = [layers.dense(width) for _ in range(num_set_inputs)]
        self.attention = AttentivePool(width) if aggregation == "attention" else None
        self.head = MapGaussianHead(width, size, residual_layers)

    def call(self, item_inputs: list, set_inputs: list, training: bool = False) -> tfd.Distribution:
        items = sum(project(x) for project, x in zip(self.item_projections, item_inputs))
        sets = sum(project(x) for project, x in zip(self.set_projections, set_inputs))
        if self.attention is None:
            hidden = _pool_items(items) + sets
        else:  # The set inputs join every item before the attention weighs them.
            hidden = self.attention(items + (tf.expand_dims(sets, _ITEMS) if set_inputs else 0.0))
        return self.head(hidden, training=training)


class HierarchicalFewShotModel(base.FewShotModel):
    """Conv encoder to 4 x 4 maps, L layers of context and item latents, up-conv decoder."""

    classification_rules = ("kl", "likelihood")
    estimator_note = (
        "t > 1: every context layer c_1..c_L is sampled from q(c | x_<t) (with the support items' own z) jointly"
        " with the query's z inside the same K samples; t = 1: the joint estimate of a set of one"
    )
    separable_elbo = True
    joint_set_scoring = True

    def __init__(
        self,
        *,  # Makes all args keyword only.
        encoder_channels=(64, 128, 256),
        convs_per_stage: int = 3,
        decoder_channels=(256, 128, 64),
        decoder_convs_per_stage: int = 2,
        hidden_size: int = 128,
        context_channels: int = 32,
        latent_channels: int = 32,
        num_layers: int = 3,
        residual_layers: int = 3,
        batch_norm_momentum: float = 0.9,
        kernel_initializer: str = "glorot_uniform",
        context_aggregation: str = "mean",
        **kwargs,
    ):
        """Builds the networks.

        Args:
          encoder_channels, convs_per_stage: the shared ConvEncoder (28 -> 4 x 4 maps).
          decoder_channels, decoder_convs_per_stage: the UpConvDecoder from 4 x 4 maps.
          hidden_size: channels of every latent network's 4 x 4 maps.
          context_channels, latent_channels: channels of each layer's c and z maps.
          num_layers: L, stochastic layers (each a c and a z).
          residual_layers: 3x3 conv + batch norm layers in each residual block.
          batch_norm_momentum: of every batch norm's moving averages.
          kernel_initializer: of the dense and conv layers (layers.KERNEL_INITIALIZERS).
          context_aggregation: how the recognition networks q(c_l | ...) pool the set,
            "mean" (CHFSGM) or "attention" (SCHA-VAE; the priors p(c_l | ...) keep the
            mean, as in its public code).
        """
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.context_channels = context_channels
        with layers.batch_norm_momentum(batch_norm_momentum), layers.kernel_initializer(kernel_initializer):
            self.encoder = layers.ConvEncoder(encoder_channels, convs_per_stage=convs_per_stage)
            if self.encoder.output_map_shape[:2] != (4, 4):
                raise ValueError(f"the encoder must end at 4 x 4 maps (3 stages), got {encoder_channels}")
            self.projection = layers.Chain([layers.dense(hidden_size, use_bias=False), layers.BatchNorm()])
            nets = dict(residual_layers=residual_layers)
            recognition = dict(nets, aggregation=context_aggregation)
            # Index 0 is the top layer L; the top context pools h alone.
            self.context_posteriors = [SetLatentNetwork(hidden_size, context_channels, 1, 0, **recognition)] + [
                SetLatentNetwork(hidden_size, context_channels, 2, 1, **recognition) for _ in range(num_layers - 1)
            ]
            self.context_priors = [
                SetLatentNetwork(hidden_size, context_channels, 1, 1, **nets) for _ in range(num_layers - 1)
            ]
            self.latent_posteriors = [
                ItemLatentNetwork(hidden_size, latent_channels, 2 + (layer > 0), **nets) for layer in range(num_layers)
            ]
            self.latent_priors = [
                ItemLatentNetwork(hidden_size, latent_channels, 1 + (layer > 0), **nets) for layer in range(num_layers)
            ]
            self.decoder_z = layers.dense(hidden_size)
            self.decoder_c = layers.dense(hidden_size)
            self.decoder_in = layers.dense(decoder_channels[0])
            self.decoder = layers.UpConvDecoder(decoder_channels, decoder_convs_per_stage, dense_stem=False)

    def warm_start_additions(self) -> list:
        """The attention of context_aggregation="attention": a model that pools by the
        mean (CHFSGM; configs/hfsgm.py) starts a SCHA-VAE as the same function."""
        return [net.attention for net in self.context_posteriors if net.attention is not None]

    def _encode(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        """[..., T, 28, 28, 1] (1 or 2 leading dims) -> item maps h [..., T, 4, 4, hidden]."""
        flat = layers.encode_items(self.encoder, images, self.encoder.output_size, training)  # [..., T, F]
        maps = tf.reshape(flat, tf.concat([tf.shape(flat)[:-1], self.encoder.output_map_shape], 0))
        return tf.nn.elu(self.projection(maps, training=training))

    def _encode_samples(self, images: tf.Tensor, num_samples) -> tf.Tensor:
        """`_encode` (inference mode) broadcast to K samples: [K, ..., T, 4, 4, hidden]."""
        features = self._encode(images, False)
        return tf.broadcast_to(features, tf.concat([[num_samples], tf.shape(features)], 0))

    def _item_latent(self, layer: int, features, above, context, seed, training: bool, with_prior=True) -> tuple:
        """z_l ~ q(z_l | h, z_{l+1}, c_l), with q and p(z_l | z_{l+1}, c_l) (None unless `with_prior`).

        features [..., T, 4, 4, W]; above (z_{l+1}, None at the top) [..., T, 4, 4, Z];
        context c_l [..., 4, 4, C]. Returns (z, q, p), batch shape [..., T].
        """
        context = tf.expand_dims(context, _ITEMS)
        given = [] if above is None else [above]
        posterior = self.latent_posteriors[layer]([features, *given, context], training=training)
        prior = self.latent_priors[layer]([*given, context], training=training) if with_prior else None
        return posterior.sample(seed=seed), posterior, prior

    def _top_down(self, features: tf.Tensor, seed: tf.Tensor, training: bool, with_priors: bool = True) -> tuple:
        """Every latent of the sets from the recognition model, top layer first.

        Args:
          features: item maps [..., T, 4, 4, W].
          with_priors: False when only the samples are wanted (a support's contexts):
            the prior networks are then not run and every p is None.

        Returns:
          (contexts, latents): lists of L (sample, q, p) triples; contexts' batch shape
          [...], latents' [..., T].
        """
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2 * self.num_layers))
        contexts, latents = [], []
        for layer in range(self.num_layers):
            if layer == 0:
                posterior = self.context_posteriors[0]([features], [], training=training)
                prior = _standard_map_normal(posterior.mean()) if with_priors else None
            else:
                above, context_above = latents[-1][0], contexts[-1][0]
                posterior = self.context_posteriors[layer]([features, above], [context_above], training=training)
                prior = None
                if with_priors:
                    prior = self.context_priors[layer - 1]([above], [context_above], training=training)
            context = posterior.sample(seed=seeds[2 * layer])
            contexts.append((context, posterior, prior))
            above = latents[-1][0] if latents else None
            layer_seed = seeds[2 * layer + 1]
            latents.append(self._item_latent(layer, features, above, context, layer_seed, training, with_priors))
        return contexts, latents

    def _likelihood(self, latents: list, contexts: list, training: bool) -> tfd.Distribution:
        """p(x | z, c) for item latents [..., T, 4, 4, Z] and set contexts [..., 4, 4, C] (L each)."""
        hidden = self.decoder_z(tf.concat(latents, -1)) + tf.expand_dims(
            self.decoder_c(tf.concat(contexts, -1)), _ITEMS
        )
        maps = self.decoder_in(tf.nn.elu(hidden))
        return layers.bernoulli_images(_on_maps(lambda m: self.decoder(m, training=training), maps))

    def context_posterior(self, sets: tf.Tensor, training: bool = False) -> tfd.Distribution:
        """q(c_L | X), the top context layer, for sets [batch, set_size, 28, 28, 1]: batch
        shape [batch], event [4, 4, context_channels]. (The KL rule compares these.)"""
        base.check_images(sets, 5, "sets")
        return self.context_posteriors[0]([self._encode(sets, training)], [], training=training)

    def elbo(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
        log_likelihood, kl = self.elbo_terms(batch, seed, training)
        return log_likelihood - kl

    def elbo_terms(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tuple:
        base.check_images(batch, 5, "batch")
        contexts, latents = self._top_down(self._encode(batch, training), seed, training)
        likelihood = self._likelihood([z for z, _, _ in latents], [c for c, _, _ in contexts], training)
        kl = sum(tfd.kl_divergence(q, p) for _, q, p in contexts)
        kl += sum(tf.reduce_sum(tfd.kl_divergence(q, p), axis=-1) for _, q, p in latents)
        return tf.reduce_sum(likelihood.log_prob(batch), axis=-1), kl

    def set_log_weights(self, sets: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        """All latents from q(c, Z | X): log p(X, c_k, Z_k) - log q(c_k, Z_k | X), [K, batch]."""
        base.check_images(sets, 5, "sets")
        contexts, latents = self._top_down(self._encode_samples(sets, num_samples), seed, training=False)
        likelihood = self._likelihood([z for z, _, _ in latents], [c for c, _, _ in contexts], training=False)
        log_weights = tf.reduce_sum(likelihood.log_prob(sets), axis=-1)
        log_weights += sum(p.log_prob(c) - q.log_prob(c) for c, q, p in contexts)
        log_weights += sum(tf.reduce_sum(p.log_prob(z) - q.log_prob(z), axis=-1) for z, q, p in latents)
        return log_weights

    def _support_contexts(self, support: tf.Tensor, num_samples, seed: tf.Tensor) -> list:
        """c_1..c_L ~ q(c | support), K per set: L maps [K, batch, 4, 4, C], top first."""
        features = self._encode_samples(support, num_samples)
        contexts, _ = self._top_down(features, seed, training=False, with_priors=False)
        return [c for c, _, _ in contexts]

    def _query_log_weights(self, support, query, num_samples, seed) -> tf.Tensor:
        context_seed, latent_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        contexts = self._support_contexts(support, num_samples, context_seed)
        features = self._encode_samples(query[:, None], num_samples)  # [K, B, 1, ...]
        seeds = tf.unstack(tf.random.experimental.stateless_split(latent_seed, self.num_layers))
        latents, log_weights = [], 0.0
        for layer, context in enumerate(contexts):
            above = latents[-1] if latents else None
            z, posterior, prior = self._item_latent(layer, features, above, context, seeds[layer], training=False)
            log_weights += prior.log_prob(z) - posterior.log_prob(z)
            latents.append(z)
        log_weights += self._likelihood(latents, contexts, training=False).log_prob(query[:, None])
        return log_weights[..., 0]

    def _zero_shots(self, support) -> tf.Tensor | bool:
        shots = support.shape[1]
        return shots == 0 if shots is not None else tf.equal(tf.shape(support)[1], 0)

    def log_weights(self, support: tf.Tensor, query: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        return layers.branch(
            self._zero_shots(support),
            lambda: self.set_log_weights(query[:, None], num_samples, seed),
            lambda: self._query_log_weights(support, query, num_samples, seed),
        )

    def _generate(self, contexts: list | None, batch_size, seed: tf.Tensor) -> tf.Tensor:
        """Bernoulli means of one new item per set, z from the priors top-down.

        contexts: L maps [batch, 4, 4, C] to condition on, or None to draw them too, from
        p(c) for a set of one (the new item).
        """
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2 * self.num_layers))
        drawn_contexts, latents = [], []
        for layer in range(self.num_layers):
            if contexts is not None:
                context = contexts[layer]
            elif layer == 0:
                shape = tf.stack([batch_size, 4, 4, self.context_channels])
                context = tf.random.stateless_normal(shape, seeds[0])
            else:
                prior = self.context_priors[layer - 1]([latents[-1]], [drawn_contexts[-1]])
                context = prior.sample(seed=seeds[2 * layer])
            drawn_contexts.append(context)
            given = latents[-1:]
            prior = self.latent_priors[layer]([*given, tf.expand_dims(context, _ITEMS)])
            latents.append(prior.sample(seed=seeds[2 * layer + 1]))
        return self._likelihood(latents, drawn_contexts, training=False).mean()[:, 0]

    def sample_probs(self, support: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        context_seed, latent_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        batch_size = tf.shape(support)[0]

        def conditional():
            contexts = self._support_contexts(support, 1, context_seed)
            return self._generate([c[0] for c in contexts], batch_size, latent_seed)

        return layers.branch(
            self._zero_shots(support), lambda: self._generate(None, batch_size, latent_seed), conditional
        )
