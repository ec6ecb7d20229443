"""Variational and importance-weighted autoencoders (the unconditional baselines).

Generative story with L stochastic layers (L = 2 is Burda et al.'s Omniglot model):
  z_L ~ N(0, I),  z_l ~ p(z_l | z_{l+1}),  x ~ Bernoulli(decoder(z_1)).
Recognition model q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}).

With K samples z^k ~ q, the bound is
  L_K(x) = E log (1/K) sum_k p(x, z^k) / q(z^k | x)  <=  log p(x),
which is the ELBO at K = 1 (the `vae`) and tightens with K (the `iwae`, K = 50).
The support set is ignored: log p(x_t | x_<t) = log p(x_t) at every t.

#### References
[1] Kingma & Welling. Auto-Encoding Variational Bayes. ICLR 2014. arXiv:1312.6114
[2] Burda, Grosse & Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    arXiv:1509.00519
"""

import keras
import tensorflow as tf

from oneshot_tf.models import base, layers


class GaussianMlp(keras.layers.Layer):
    """MLP followed by a NormalHead: [..., D] -> Gaussian over `size` dims, batch shape [...]."""

    def __init__(self, hidden_sizes, size: int, activation: str = "tanh", **kwargs):
        super().__init__(**kwargs)
        self.net = layers.mlp(hidden_sizes, activation)
        self.head = layers.NormalHead(size)

    def call(self, inputs: tf.Tensor):
        return self.head(self.net(inputs))


class Vae(base.FewShotModel):
    """VAE / IWAE: MLP encoder and decoder between x and z_1, MLPs between the z layers."""

    conditional = False
    classification_rules = ()
    one_pass_scoring = True

    def __init__(
        self,
        *,  # Makes all args keyword only.
        hidden_sizes=(200, 200),
        latent_sizes=(100, 50),
        upper_hidden_sizes=(100, 100),
        activation: str = "tanh",
        num_samples: int = 1,
        **kwargs,
    ):
        """Builds the networks.

        Args:
          hidden_sizes: hidden widths of the encoder MLP; the decoder mirrors them.
          latent_sizes: sizes of z_1 .. z_L.
          upper_hidden_sizes: hidden widths of the MLPs between z_l and z_{l+1}.
          activation: activation of the MLPs.
          num_samples: K of the training bound (1: VAE; 50: Burda's IWAE).
        """
        super().__init__(**kwargs)
        if not latent_sizes:
            raise ValueError("latent_sizes needs at least one stochastic layer")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.latent_sizes = tuple(latent_sizes)
        self.num_samples = num_samples
        self.encoder = layers.FcEncoder(hidden_sizes, activation)
        self.decoder = layers.FcDecoder(tuple(reversed(hidden_sizes)), activation)
        self.bottom_posterior = layers.NormalHead(latent_sizes[0])
        # q(z_{l+1} | z_l) and p(z_l | z_{l+1}) for l = 1 .. L-1.
        self.upper_posteriors = [GaussianMlp(upper_hidden_sizes, size, activation) for size in latent_sizes[1:]]
        self.lower_priors = [GaussianMlp(upper_hidden_sizes, size, activation) for size in latent_sizes[:-1]]

    def _log_weights(self, images: tf.Tensor, num_samples, seed: tf.Tensor, training: bool) -> tf.Tensor:
        """images [N, 28, 28, 1] -> log p(x, z^k) - log q(z^k | x), float32 [K, N]."""
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(self.latent_sizes)))
        posterior = self.bottom_posterior(self.encoder(images, training=training))
        z = posterior.sample(num_samples, seed=seeds[0])  # [K, N, d_1]
        log_q = posterior.log_prob(z)
        latents = [z]
        for layer, layer_seed in zip(self.upper_posteriors, seeds[1:]):
            posterior = layer(latents[-1])
            z = posterior.sample(seed=layer_seed)
            log_q += posterior.log_prob(z)
            latents.append(z)
        log_p = layers.standard_normal(self.latent_sizes[-1]).log_prob(latents[-1])
        for layer, z_lower, z_upper in zip(self.lower_priors, latents[:-1], latents[1:]):
            log_p += layer(z_upper).log_prob(z_lower)
        logits = layers.batch_apply(lambda z1: self.decoder(z1, training=training), latents[0])
        log_p += layers.bernoulli_images(logits).log_prob(images)
        return log_p - log_q

    def elbo(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
        base.check_images(batch, 5, "batch")
        items = layers.merge_leading(batch)
        bound = layers.log_mean_exp(self._log_weights(items, self.num_samples, seed, training), axis=0)
        return tf.reduce_sum(tf.reshape(bound, tf.shape(batch)[:2]), axis=1)

    def log_weights(self, support: tf.Tensor, query: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        del support  # Unconditional.
        return self._log_weights(query, num_samples, seed, training=False)

    def per_shot_log_weights(self, episodes: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        base.check_images(episodes, 5, "episodes")
        log_weights = self._log_weights(layers.merge_leading(episodes), num_samples, seed, training=False)
        return tf.reshape(log_weights, tf.concat([[-1], tf.shape(episodes)[:2]], axis=0))

    def sample_probs(self, support: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(support)[0]
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(self.latent_sizes)))
        z = layers.standard_normal(self.latent_sizes[-1]).sample(batch, seed=seeds[-1])
        for layer, layer_seed in zip(reversed(self.lower_priors), reversed(seeds[:-1])):
            z = layer(z).sample(seed=layer_seed)
        return tf.sigmoid(tf.cast(self.decoder(z), tf.float32))
