"""Neural Statistician specifics: order-free context, one-pass prefixes."""

import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import models
from tests import helpers


def _model():
    config = helpers.tiny_config("statistician")
    return models.get_model(config.model, **config.model_kwargs.to_dict())


class StatisticianTest(tf.test.TestCase):
    def test_context_posterior_ignores_set_order(self):
        model = _model()
        sets = helpers.random_images([3, 6, 28, 28, 1])
        permuted = tf.gather(sets, [4, 2, 0, 5, 1, 3], axis=1)
        a, b = model.context_posterior(sets), model.context_posterior(permuted)
        self.assertEqual(a.batch_shape, (3,))
        self.assertAllClose(a.mean(), b.mean(), atol=1e-5)
        self.assertAllClose(a.stddev(), b.stddev(), atol=1e-5)
        self.assertNotAllClose(a.mean(), model.context_posterior(sets[:, :3]).mean())

    def test_one_pass_prefixes_equal_separate_posteriors(self):
        model = _model()
        episodes = helpers.random_images([2, 5, 28, 28, 1])
        prefixes, _ = model.prefix_context_posteriors(episodes)
        self.assertEqual(prefixes.batch_shape, (2, 5))
        # t = 1 conditions on nothing: the prior N(0, I).
        self.assertAllClose(prefixes.mean()[:, 0], tf.zeros([2, 4]))
        self.assertAllClose(prefixes.stddev()[:, 0], tf.ones([2, 4]))
        for t in range(1, 5):
            separate = model.context_posterior(episodes[:, :t])
            self.assertAllClose(prefixes.mean()[:, t], separate.mean(), atol=1e-5)
            self.assertAllClose(prefixes.stddev()[:, t], separate.stddev(), atol=1e-5)

    def test_zero_shots_use_the_prior_in_graph_mode_too(self):
        model = _model()
        sample = tf.function(
            model.sample, input_signature=[tf.TensorSpec([None, None, 28, 28, 1]), tf.TensorSpec([2], tf.int32)]
        )
        probs, _ = sample(tf.zeros([2, 0, 28, 28, 1]), tf.constant([1, 1]))
        eager, _ = model.sample(tf.zeros([2, 0, 28, 28, 1]), tf.constant([1, 1]))
        self.assertAllClose(probs, eager)


if __name__ == "__main__":
    absltest.main()
