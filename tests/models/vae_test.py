"""VAE/IWAE-specific tests: the importance-sampled bound on a briefly trained model."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import train
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, omniglot
from tests import helpers


class IwaeBoundTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        config = helpers.tiny_config("iwae")
        config.model_kwargs.hidden_sizes = (64,)
        config.model_kwargs.latent_sizes = (16, 8)
        config.model_kwargs.upper_hidden_sizes = (32,)
        config.data.batch_size = 32
        config.train.steps = 400
        config.train.steps_per_loop = 100
        config.train.schedule = "constant"
        cls.workdir = tf.compat.v1.test.get_temp_dir() + "/iwae_bound"
        train.train_and_evaluate(config, cls.workdir, helpers.DATA_DIR)
        cls.model, cls.step, *_ = workdir_lib.restore_model(config, cls.workdir)
        cls.splits = omniglot.load_configured_splits(config.data, helpers.DATA_DIR, config.seed)

    def test_trained_to_the_requested_step(self):
        self.assertEqual(self.step, 400)

    def test_more_importance_samples_give_a_tighter_bound(self):
        images = tf.constant(episodes.all_images(self.splits["test"])[::50])  # 264 drawings
        empty = tf.zeros([len(images), 0, 28, 28, 1])
        bounds = {
            k: np.mean([self.model.log_prob(empty, images, k, tf.constant([s, k])).numpy() for s in range(3)])
            for k in (1, 5, 50)
        }
        self.assertLess(bounds[1], bounds[5])
        self.assertLess(bounds[5], bounds[50])
        self.assertLess(bounds[50], 0.0)
        # Training moved the model well away from its initial ~-545 nats.
        self.assertGreater(bounds[50], -250.0)

    def test_unconditional_model_ignores_the_support(self):
        query = tf.constant(episodes.all_images(self.splits["test"])[:8])
        support = tf.constant(episodes.all_images(self.splits["test"])[8:48].reshape(8, 5, 28, 28, 1))
        seed = tf.constant([3, 3])
        self.assertAllClose(
            self.model.log_prob(support, query, 10, seed), self.model.log_prob(support[:, :0], query, 10, seed)
        )


if __name__ == "__main__":
    absltest.main()
