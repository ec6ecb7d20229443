"""The interface every model implements, with the parts that follow from it.

A model provides three methods:
  * `elbo(batch, seed, training)` -> [batch]: the training bound for each set, in
    nats (the trainer maximises its mean);
  * `log_weights(support, query, num_samples, seed)` -> [num_samples, batch]: the
    importance log-weights log p(query, z_k | support) - log q(z_k | query, support);
  * `sample_probs(support, seed)` -> [batch, 28, 28, 1]: Bernoulli means of one new
    drawing per support set.
From these, `log_prob` (the importance-sampled log p(query | support)),
`per_shot_log_weights` (all positions of an episode) and `sample` follow. Models
that can score all positions of an episode in one pass override
`per_shot_log_weights`. Models with a posterior over a whole set's latents may
also score a set jointly (`set_log_weights`, declared by `joint_set_scoring`).

Images are float32 [..., 28, 28, 1] in [0, 1], ink = 1.0; `support` is
[batch, shots, 28, 28, 1] with shots >= 0.
"""

import keras
import tensorflow as tf

from oneshot_tf.models import layers


def check_images(x: tf.Tensor, rank: int, name: str):
    """Raises ValueError unless x has static rank `rank` and ends in [28, 28, 1]."""
    shape = x.shape
    if shape.rank is not None and (shape.rank != rank or tuple(shape[-3:]) not in (layers.IMAGE_SHAPE, (None,) * 3)):
        expected = ["batch", "shots"][: rank - 3] + ["28", "28", "1"]
        raise ValueError(f"{name} must have shape [{', '.join(expected)}], got {shape}")


class FewShotModel(keras.Model):
    """Base class: scores and draws images given a support set.

    What a model can do beyond the three methods is declared, not probed:
    `conditional`, `classification_rules`, `estimator_note` and `one_pass_scoring`
    (class attributes; subclasses override them).
    """

    #: False for models that ignore the support set (vae, iwae).
    conditional = True
    #: Few-shot classification rules (oneshot_tf/classify.py), the primary one first:
    #: "likelihood" (any conditional model), "kl" (needs `context_posterior`).
    classification_rules = ("likelihood",)
    #: How the per-shot estimate samples, beyond the base estimator (eval.json states it).
    estimator_note = ""
    #: True when `per_shot_log_weights` scores all positions in one pass rather than
    #: the base class's loop over positions.
    one_pass_scoring = False
    #: True when `elbo_terms` splits the bound into its log-likelihood and KL terms
    #: (needed by `train.likelihood_weight_period`).
    separable_elbo = False
    #: True when `set_log_weights` scores a whole set jointly, log p(x_1..x_n), with a
    #: proposal over all of the set's latents (the set-level protocol of SPEC §3).
    joint_set_scoring = False

    def warm_start_additions(self) -> list:
        """Layers this model adds to a simpler model of its family, whose exports can
        still start it (train.init_from). One with `start_as_replaced()` has it set its
        weights so that it computes what the simpler model computes in its place; others
        keep their initialisation. A model that is no such extension has none."""
        return []

    def warm_start_widened(self) -> list:
        """Kernels (of the extension `warm_start_additions` describes) that read more
        inputs than the simpler model's: [inputs, ...] where the export has fewer rows.
        They take the export's rows first and zeros after, so the added inputs start
        unread. A model that is no such extension has none."""
        return []

    def elbo(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Training bound per set, in nats.

        Args:
          batch: binary images [batch, set_size, 28, 28, 1].
          seed: int32 [2].
          training: batch-norm and dropout mode.

        Returns:
          float32 [batch].
        """
        raise NotImplementedError

    def elbo_terms(self, batch: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tuple:
        """The bound's two terms per set: (E log p(x | latents), KL(q || p)), float32 [batch] each.

        `elbo` equals their difference for the same seed. Only models that declare
        `separable_elbo` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not split its bound (separable_elbo is False)")

    def log_weights(self, support: tf.Tensor, query: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
        """Importance log-weights for query given support.

        Args:
          support: [batch, shots, 28, 28, 1], shots >= 0.
          query: [batch, 28, 28, 1].
          num_samples: K, a Python int or scalar int32 tensor.
          seed: int32 [2].

        Returns:
          float32 [K, batch].
        """
        raise NotImplementedError

    def set_log_weights(self, sets: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        """Importance log-weights of whole sets: log p(X, latents_k) - log q(latents_k | X).

        Their log-mean-exp over K is a stochastic lower bound on log p(x_1..x_n) that
        tightens as K grows; K = 1 gives the training bound's estimate. Only models that
        declare `joint_set_scoring` implement it.

        Args:
          sets: [batch, set_size, 28, 28, 1].
          num_samples: K.
          seed: int32 [2].

        Returns:
          float32 [K, batch].
        """
        raise NotImplementedError(f"{type(self).__name__} does not score sets jointly (joint_set_scoring is False)")

    def sample_probs(self, support: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Bernoulli means of one new drawing per support set: [batch, 28, 28, 1]."""
        raise NotImplementedError

    def log_prob(self, support: tf.Tensor, query: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        """Importance-sampled log p(query | support) in nats, float32 [batch].

        log (1/K) sum_k p(query, z_k | support) / q(z_k | query, support): a lower
        bound in expectation that tightens as K grows (Burda et al. 2016).
        """
        check_images(support, 5, "support")
        check_images(query, 4, "query")
        return layers.log_mean_exp(self.log_weights(support, query, num_samples, seed), axis=0)

    def per_shot_log_weights(self, episodes: tf.Tensor, num_samples, seed: tf.Tensor) -> tf.Tensor:
        """Log-weights for every position t of an episode given the items before it.

        Args:
          episodes: [batch, T, 28, 28, 1].

        Returns:
          float32 [K, batch, T]; entry [:, :, t] scores x_t given x_<t.
        """
        check_images(episodes, 5, "episodes")
        num_items = episodes.shape[1]
        seeds = tf.random.experimental.stateless_split(seed, num_items)
        columns = [self.log_weights(episodes[:, :t], episodes[:, t], num_samples, seeds[t]) for t in range(num_items)]
        return tf.stack(columns, axis=-1)

    def sample(self, support: tf.Tensor, seed: tf.Tensor) -> tuple:
        """One new drawing per support set.

        Returns:
          (probs, images), both float32 [batch, 28, 28, 1]: Bernoulli means and a
          binary draw from them.
        """
        check_images(support, 5, "support")
        model_seed, pixel_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        probs = self.sample_probs(support, model_seed)
        return probs, layers.draw_binary(probs, pixel_seed)
