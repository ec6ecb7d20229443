"""Sequential generative model with spatial-transformer attention (Rezende et al. 2016).

A DRAW-style recurrent model writes a drawing onto a hidden canvas C over S steps.
For one-shot generation it reads the conditioning drawings x' (the support) at every
step. With support slots x'_0 (a learned "nothing to copy" patch) and x'_1..x'_n:
  v_s = sum_j w_j read(x'_j, A_s),  w = softmax_j(<q(h_{s-1}), k(read(x'_j, A_s))>)
  z_s ~ p(z) = N(0, I)
  h_s = LSTM_dec(h_{s-1}, [z_s, v_s]),  C_s = C_{s-1} + write(f_w(h_s), B_s)
  p(x | z_1..S, x') = Bernoulli(logits = f_o(C_S)),
where A_s, B_s are spatial-transformer parameters (scales and shifts) computed from
h_{s-1} and h_s. The canvas C is the image's logits (f_o adds a bias), or with
`canvas_channels` and `observation_filters` the paper's hidden canvas (§3.2.3): C
channels written by the same windows, turned into logits by a small convolutional
f_o. Recognition, q(z_s | x, z_<s, x'): an encoder LSTM reads the target x and the
error x - sigmoid(f_o(C_{s-1})) through a third transformer.
Bound: log p(x | x') >= E_q [log p(x | z, x') - sum_s KL(q(z_s | ...) || N(0, I))].
With no support drawings only the learned slot is read: the unconditional model.

#### References
[1] Rezende, Mohamed, Danihelka, Gregor & Wierstra. One-Shot Generalization in Deep
    Generative Models. ICML 2016. arXiv:1603.05106
[2] Gregor et al. DRAW: A Recurrent Neural Network For Image Generation. ICML 2015.
[3] Jaderberg et al. Spatial Transformer Networks. NIPS 2015.
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from oneshot_tf.models import base, layers, spatial_transformer

tfd = tfp.distributions


class TransformerParams(keras.layers.Layer):
    """Hidden state -> (s_x, s_y, t_x, t_y): scales in (0.1, 1.1), shifts in (-1, 1)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4, kernel_initializer="zeros")

    def call(self, hidden: tf.Tensor) -> tf.Tensor:
        raw = tf.cast(self.dense(hidden), tf.float32)
        return tf.concat([0.1 + tf.sigmoid(raw[..., :2] + 1.0), tf.tanh(raw[..., 2:])], axis=-1)


class SequentialGenerativeModel(base.FewShotModel):
    """DRAW-style canvas model reading its support at every step."""

    one_pass_scoring = True

    def __init__(
        self,
        *,  # Makes all args keyword only.
        num_steps: int = 80,
        hidden_size: int = 256,
        latent_size: int = 4,
        read_size: int = 12,
        write_size: int = 12,
        key_size: int = 64,
        canvas_channels: int = 1,
        observation_filters: int = 0,
        detach_read_windows: bool = False,
        antialias_reads: bool = False,
        target_read_size: int = 0,
        **kwargs,
    ):
        """Builds the networks.

        Args:
          num_steps: S, canvas updates (the paper's Omniglot number uses 80).
          hidden_size: LSTM sizes.
          latent_size: dims of each z_s.
          read_size, write_size: side of the read and write patches.
          key_size: size of the support-attention keys.
          canvas_channels: channels of the canvas; above 1 needs observation_filters.
          observation_filters: 0: the canvas (one channel) plus a bias is the logits;
            above 0: f_o is a 3x3 convolution of that many filters (ELU) and a 1x1
            convolution to the logits.
          detach_read_windows: where the two reads look is computed from the decoder
            state with its gradient stopped: the windows' layers still learn, but the
            loop state -> window -> read -> next state, which can amplify gradients
            over the steps, carries none. The forward pass is the same.
          antialias_reads: the target and support reads average each point's
            neighbourhood as wide as the grid's spacing (spatial_transformer.read),
            so a window wider than its patch sees every pixel in it, not a subsample.
          target_read_size: side of the encoder's read of the target and its error; 0:
            read_size. 28 lets the encoder see the drawing at full resolution while the
            support reads stay small (the encoder's input grows to 2 * 28 * 28).
        """
        super().__init__(**kwargs)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if canvas_channels < 1 or observation_filters < 0:
            raise ValueError(
                f"canvas_channels must be >= 1 and observation_filters >= 0, got {canvas_channels} and "
                f"{observation_filters}"
            )
        if target_read_size < 0:
            raise ValueError(f"target_read_size must be >= 0 (0: read_size), got {target_read_size}")
        if canvas_channels > 1 and not observation_filters:
            raise ValueError(
                f"canvas_channels={canvas_channels} needs observation_filters > 0: without f_o a canvas of "
                "several channels has no single logit per pixel"
            )
        self.num_steps = num_steps
        self.hidden_size = hidden_size
        self.latent_size = latent_size
        self.read_size = read_size
        self.target_read_size = target_read_size or read_size
        self.write_size = write_size
        self.canvas_channels = canvas_channels
        self.detach_read_windows = detach_read_windows
        self.antialias_reads = antialias_reads
        self.decoder_cell = keras.layers.LSTMCell(hidden_size)
        self.encoder_cell = keras.layers.LSTMCell(hidden_size)
        self.target_read = TransformerParams()
        self.support_read = TransformerParams()
        self.write_params = TransformerParams()
        self.write_patch = keras.layers.Dense(canvas_channels * write_size * write_size)
        self.observation = None
        if observation_filters:
            self.observation = keras.Sequential(
                [
                    keras.layers.Conv2D(observation_filters, 3, padding="same", activation="elu"),
                    keras.layers.Conv2D(1, 1, use_bias=False),
                ]
            )
        self.query = keras.layers.Dense(key_size)
        self.key = keras.layers.Dense(key_size)
        self.posterior = layers.NormalHead(latent_size)
        self.empty_patch = self.add_weight(shape=(read_size * read_size,), initializer="zeros", name="empty_patch")
        self.canvas_bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(-3.0), name="canvas_bias")

    def _read_window(self, layer: TransformerParams, hidden: tf.Tensor) -> tf.Tensor:
        """[N, 4] read window from the decoder state [N, H] (see detach_read_windows)."""
        return layer(tf.stop_gradient(hidden) if self.detach_read_windows else hidden)

    def _read_support(self, hidden, slots, mask):
        """v_s: attention over the support slots' patches read at the same place.

        Args:
          hidden: decoder state [N, H] of N sequences.
          slots: the drawings in each sequence's slots 1..J-1 [N, J - 1, 28, 28].
          mask: bool [N, J], visible slots (slot 0, the learned patch, always).
        """
        params = self._read_window(self.support_read, hidden)[:, None]  # [N, 1, 4]
        patches = spatial_transformer.read(slots, params, self.read_size, self.antialias_reads)  # [N, J-1, p, p]
        patches = tf.reshape(patches, tf.concat([tf.shape(slots)[:2], [self.read_size**2]], 0))
        empty = tf.broadcast_to(self.empty_patch, tf.stack([tf.shape(hidden)[0], 1, self.read_size**2]))
        patches = tf.concat([tf.cast(empty, tf.float32), patches], axis=1)  # [N, J, p*p]
        scores = tf.einsum(
            "nk,njk->nj", tf.cast(self.query(hidden), tf.float32), tf.cast(self.key(patches), tf.float32)
        )
        weights = tf.nn.softmax(tf.where(mask, scores, -1e9), axis=-1)
        return tf.einsum("nj,njk->nk", weights, patches)

    def _logits(self, canvas: tf.Tensor) -> tf.Tensor:
        """f_o: canvas [N, C, 28, 28] -> Bernoulli logits [N, 28, 28]."""
        if self.observation is None:
            return canvas[:, 0] + self.canvas_bias
        rendered = self.observation(tf.transpose(canvas, [0, 2, 3, 1]))[..., 0]
        return tf.cast(rendered, tf.float32) + self.canvas_bias

    def _run(self, targets, support, slot_of, mask, seed, training_kl: bool):
        """Runs N sequences. targets [N, 28, 28] or None (generation).

        Returns:
          (canvas logits [N, 28, 28], log p(z) - log q(z) [N] or -KL [N] if training_kl).
        """
        num = tf.shape(slot_of)[0]
        zeros = tf.zeros(tf.stack([num, self.hidden_size]), self.decoder_cell.compute_dtype)
        prior = layers.standard_normal(self.latent_size)
        slots = tf.gather(support, slot_of)  # [N, J-1, 28, 28], read at every step.
        step_seeds = tf.random.experimental.stateless_split(seed, self.num_steps)

        def step(s, decoder_state, encoder_state, canvas, log_ratio):
            hidden = tf.cast(decoder_state[0], tf.float32)
            read = self._read_support(hidden, slots, mask)
            if targets is None:
                z = prior.sample(num, seed=step_seeds[s])
            else:
                error = targets - tf.sigmoid(self._logits(canvas))
                params = self._read_window(self.target_read, hidden)
                glimpse = spatial_transformer.read(
                    tf.stack([targets, error], 1), params[:, None], self.target_read_size, self.antialias_reads
                )
                glimpse = tf.reshape(glimpse, tf.stack([num, 2 * self.target_read_size**2]))
                encoder_out, encoder_state = self.encoder_cell(tf.concat([glimpse, read, hidden], -1), encoder_state)
                posterior = self.posterior(encoder_out)
                z = posterior.sample(seed=step_seeds[s])
                if training_kl:
                    log_ratio -= tfd.kl_divergence(posterior, prior)
                else:
                    log_ratio += prior.log_prob(z) - posterior.log_prob(z)
            hidden, decoder_state = self.decoder_cell(tf.concat([z, read], -1), decoder_state)
            patch = tf.reshape(
                tf.cast(self.write_patch(hidden), tf.float32),
                tf.stack([num, self.canvas_channels, self.write_size, self.write_size]),
            )
            canvas += spatial_transformer.write(patch, self.write_params(hidden)[:, None], 28)
            return s + 1, list(decoder_state), list(encoder_state), canvas, log_ratio

        # A symbolic loop, not S unrolled copies: an 80-step graph took over ten
        # minutes to trace and optimise; the loop traces in seconds.
        _, _, _, canvas, log_ratio = tf.while_loop(
            lambda s, *_: s < self.num_steps,
            step,
            (
                tf.constant(0),
                [zeros, zeros],
                [zeros, zeros],
                tf.zeros(tf.stack([num, self.canvas_channels, 28, 28])),
                tf.zeros(tf.stack([num])),
            ),
            maximum_iterations=self.num_steps,  # XLA needs the bound to compile the gradient.
        )
        return self._logits(canvas), log_ratio

    def _sequences(self, support, queries, mask, num_samples):
        """Flattens K x B x Q sequences. support [B, S], queries [B, Q], mask [Q, S + 1].

        Returns (targets [N, 28, 28], support rows [B*S, 28, 28], slot_of [N, S], mask [N, S + 1]).
        """
        batch, num_shots, num_queries = tf.shape(support)[0], tf.shape(support)[1], tf.shape(queries)[1]
        sequence = tf.range(num_samples * batch * num_queries)
        b, q = sequence // num_queries % batch, sequence % num_queries
        slot_of = b[:, None] * num_shots + tf.range(num_shots)[None, :]
        targets = tf.tile(tf.reshape(queries, [-1, 28, 28]), [num_samples, 1, 1])
        return targets, tf.reshape(support, [-1, 28, 28]), slot_of, tf.gather(mask, q)

    def _log_weights(self, support, queries, mask, num_samples, seed, training_kl=False) -> tf.Tensor:
        """[K, B, Q] log-weights (or single-sample bounds) of queries given support under mask."""
        targets, rows, slot_of, sequence_mask = self._sequences(support, queries, mask, num_samples)
        logits, log_ratio = self._run(targets, rows, slot_of, sequence_mask, seed, training_kl)
        likelihood = tfd.Independent(tfd.Bernoulli(logits=logits), 2)
        shape = tf.stack([num_samples, tf.shape(queries)[0], tf.shape(queries)[1]])
        return tf.reshape(likelihood.log_prob(targets) + log_ratio, shape)

    def elbo(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Each item given the items before it (a causal mask), summed over the set."""
        base.check_images(batch, 5, "batch")
        mask = layers.causal_mask(tf.shape(batch)[1])
        return tf.reduce_sum(self._log_weights(batch, batch, mask, 1, seed, training_kl=True)[0], axis=1)

    def per_shot_log_weights(self, episodes: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        base.check_images(episodes, 5, "episodes")
        return self._log_weights(episodes, episodes, layers.causal_mask(tf.shape(episodes)[1]), num_samples, seed)

    def log_weights(self, support: tf.Tensor, query: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        mask = layers.full_mask(tf.shape(support)[1] + 1)
        return self._log_weights(support, query[:, None], mask, num_samples, seed)[..., 0]

    def sample_probs(self, support: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        mask = layers.full_mask(tf.shape(support)[1] + 1)
        no_targets = tf.zeros(tf.stack([tf.shape(support)[0], 1, 28, 28, 1]))
        _, rows, slot_of, sequence_mask = self._sequences(support, no_targets, mask, 1)
        logits, _ = self._run(None, rows, slot_of, sequence_mask, seed, training_kl=False)
        return tf.sigmoid(logits)[..., None]
