"""The per-shot and joint-set scorers: repeatable, traced once per model, no model kept alive."""

import gc
import weakref

import ml_collections
import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import errors, evaluate
from oneshot_tf.models import layers
from tests import helpers


class PerShotLogProbsTest(tf.test.TestCase):
    def test_second_call_repeats_the_first_without_tracing(self):
        model = helpers.tiny_model("gmn")
        episodes = helpers.random_images([3, 4, 28, 28, 1]).numpy()
        first = evaluate.per_shot_log_probs(model, episodes, num_samples=5, seed=7, batch_size=2, chunk_size=2)
        scorer = evaluate._chunk_logsumexp(model, "per_shot_log_weights")
        traces = scorer.experimental_get_tracing_count()
        second = evaluate.per_shot_log_probs(model, episodes, num_samples=5, seed=7, batch_size=2, chunk_size=2)
        self.assertEqual(first.shape, (3, 4))
        self.assertAllEqual(first, second)
        self.assertEqual(scorer.experimental_get_tracing_count(), traces)
        other_seed = evaluate.per_shot_log_probs(model, episodes, num_samples=5, seed=8, batch_size=2, chunk_size=2)
        self.assertFalse(np.allclose(first, other_seed))

    def test_scorer_cache_lets_the_model_go(self):
        model = helpers.tiny_model("gmn")
        evaluate.per_shot_log_probs(model, helpers.random_images([1, 2, 28, 28, 1]).numpy(), num_samples=2, seed=0)
        self.assertIn(model, evaluate._CHUNK_SCORERS)
        model_ref = weakref.ref(model)
        del model
        gc.collect()
        self.assertIsNone(model_ref(), "the scorer cache keeps the model alive")

    def test_configured_scoring_takes_the_eval_configs_parameters(self):
        model = helpers.tiny_model("gmn")
        episodes = helpers.random_images([3, 2, 28, 28, 1]).numpy()
        eval_config = ml_collections.ConfigDict({"num_samples": 4, "seed": 3, "batch_size": 2, "chunk_size": 3})
        by_hand = evaluate.per_shot_log_probs(model, episodes, num_samples=4, seed=3, batch_size=2, chunk_size=3)
        self.assertAllEqual(evaluate.configured_log_probs(model, eval_config, episodes), by_hand)
        overridden = evaluate.per_shot_log_probs(model, episodes, num_samples=2, seed=5, batch_size=2, chunk_size=3)
        self.assertAllEqual(
            evaluate.configured_log_probs(model, eval_config, episodes, num_samples=2, seed=5), overridden
        )
        self.assertFalse(np.allclose(by_hand, overridden))

    def test_sets_score_as_the_log_mean_of_their_joint_weights(self):
        model = helpers.tiny_model("statistician")
        sets = helpers.random_images([3, 5, 28, 28, 1]).numpy()
        scores = evaluate.set_log_probs(model, sets, num_samples=4, seed=2, batch_size=2, chunk_size=4)
        self.assertEqual(scores.shape, (3,))
        # The first batch of 2 sets, its one chunk: the seeds per_shot_log_probs uses.
        chunk_seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(tf.constant([2, 0]), 0), 0
        )
        by_hand = layers.log_mean_exp(model.set_log_weights(tf.constant(sets[:2]), 4, chunk_seed), axis=0)
        self.assertAllClose(scores[:2], by_hand, rtol=1e-5)
        chunked = evaluate.set_log_probs(model, sets, num_samples=4, seed=2, batch_size=2, chunk_size=3)
        self.assertEqual(chunked.shape, (3,))
        self.assertTrue(np.all(np.isfinite(chunked)))

    def test_sets_of_a_model_without_joint_scoring_are_a_config_error(self):
        with self.assertRaisesRegex(errors.ConfigError, "does not score sets jointly"):
            evaluate.set_log_probs(
                helpers.tiny_model("gmn"), np.zeros([1, 2, 28, 28, 1], np.float32), num_samples=2, seed=0
            )

    def test_no_samples_is_a_config_error(self):
        with self.assertRaisesRegex(errors.ConfigError, "num_samples must be >= 1"):
            evaluate.per_shot_log_probs(
                helpers.tiny_model("gmn"), np.zeros([1, 2, 28, 28, 1], np.float32), num_samples=0, seed=0
            )


if __name__ == "__main__":
    absltest.main()
