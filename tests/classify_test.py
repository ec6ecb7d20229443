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

    def test_rules_by_model(self):
        self.assertEqual(self.model.classification_rules, ("kl", "likelihood"))


if __name__ == "__main__":
    absltest.main()
