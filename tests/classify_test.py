"""Few-shot classification: the KL rule's math, and both rules on a briefly trained Neural Statistician."""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl.testing import absltest

from oneshot_tf import classify, evaluate, train
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, few_shot, omniglot
from tests import helpers


class KlRuleTest(tf.test.TestCase):
    def test_kl_matches_tfp(self):
        rng = np.random.default_rng(0)
        m1, m2 = rng.normal(size=(2, 4, 3))
        s1, s2 = rng.uniform(0.5, 2.0, size=(2, 4, 3))
        expected = tfp.distributions.kl_divergence(
            tfp.distributions.MultivariateNormalDiag(m1, s1), tfp.distributions.MultivariateNormalDiag(m2, s2)
        )
        self.assertAllClose(classify._diag_gaussian_kl(m1, s1, m2, s2), expected, rtol=1e-5)


class _StubContextModel:
    """q(c | D) = N([number of ink pixels in D, 0, 3], [0.5, 1, 1]) for sets [N, T, 28, 28, 1]."""

    def context_posterior(self, sets, training=False):
        ink = tf.reduce_sum(sets, axis=[1, 2, 3, 4])
        loc = tf.stack([ink, tf.zeros_like(ink), tf.fill(tf.shape(ink), 3.0)], axis=-1)
        return tfp.distributions.MultivariateNormalDiag(loc, tf.broadcast_to([0.5, 1.0, 1.0], tf.shape(loc)))


class ContextInformationTest(tf.test.TestCase):
    def test_kl_to_the_prior_and_the_dims_that_vary_over_sets(self):
        sets = np.zeros([4, 2, 28, 28, 1], np.float32)
        for i in range(4):
            sets[i, 0, 0, :i] = 1.0  # i ink pixels in set i
        information = classify.context_information(_StubContextModel(), sets)
        # Dim 0: 0.5 * (m^2 + 0.25 - 1) - log 0.5 for m = 0..3; dim 2: 0.5 * 3^2, every set; dim 1: 0.
        dim0 = np.mean([0.5 * (m**2 + 0.25 - 1) - np.log(0.5) for m in range(4)])
        self.assertAllClose(information["kl"], dim0 + 4.5, rtol=1e-5)
        self.assertAllClose(information["max_dim_kl"], 4.5, rtol=1e-5)
        # Only dim 0's mean varies over the sets (dim 2 is far from the prior, but constant).
        self.assertEqual((information["active_dims"], information["dims"]), (1, 3))


class TrainedStatisticianTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        config = helpers.tiny_config("statistician")
        config.model_kwargs.encoder_channels = (8, 16, 16)
        config.model_kwargs.decoder_channels = (16, 16, 8)
        config.model_kwargs.hidden_size = 32
        config.model_kwargs.context_size = 16
        config.model_kwargs.latent_size = 8
        config.data.batch_size = 16
        config.train.steps = 300
        config.train.steps_per_loop = 100
        config.train.eval_every = 0
        workdir = tf.compat.v1.test.get_temp_dir() + "/classify_statistician"
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        cls.model = workdir_lib.restore_model(config, workdir).model
        cls.test = omniglot.load_configured_splits(config.data, helpers.DATA_DIR, config.seed)["test"]

    def test_own_character_scores_higher(self):
        task = few_shot.random_episodes(self.test, ways=2, shots=3, num_episodes=40, seed=1)
        scores = classify.scores(self.model, task["support"], task["queries"], "likelihood", num_samples=20)
        own = np.mean([scores[:, i, i] for i in range(2)])
        other = np.mean([scores[:, i, 1 - i] for i in range(2)])
        self.assertGreater(own, other)

    def test_error_below_chance(self):
        task = few_shot.random_episodes(self.test, ways=5, shots=1, num_episodes=40, seed=2)
        for rule in ("likelihood", "kl"):
            error = classify.error_rate(self.model, task, rule, num_samples=20)
            # Chance is 0.8; with 200 queries its standard error is 0.028, so 0.72 is ~3 below.
            self.assertLess(error, 0.72, rule)

    def test_more_shots_help(self):
        test = episodes.fixed_episodes(self.test, num_episodes=30, set_size=6, seed=3)["images"]
        log_probs = evaluate.per_shot_log_probs(self.model, test, num_samples=10, seed=0)
        # Conditioning on 5 drawings of the character beats conditioning on none.
        self.assertGreater(log_probs[:, 5].mean(), log_probs[:, 0].mean())

    def test_context_information_of_its_context(self):
        sets = episodes.fixed_episodes(self.test, num_episodes=30, set_size=5, seed=4)["images"]
        information = classify.context_information(self.model, sets)
        self.assertEqual(information["dims"], 16)
        self.assertBetween(information["active_dims"], 0, 16)
        self.assertGreater(information["kl"], 0.0)

    def test_rules_by_model(self):
        self.assertEqual(self.model.classification_rules, ("kl", "likelihood"))


if __name__ == "__main__":
    absltest.main()
