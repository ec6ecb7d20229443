"""The per-shot scorer: repeatable, traced once per model, no model kept alive."""

import gc
import weakref

import ml_collections
import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import errors, evaluate
from tests import helpers


class PerShotLogProbsTest(tf.test.TestCase):
    def test_second_call_repeats_the_first_without_tracing(self):
        model = helpers.tiny_model("gmn")
        episodes = helpers.random_images([3, 4, 28, 28, 1]).numpy()
        first = evaluate.per_shot_log_probs(model, episodes, num_samples=5, seed=7, batch_size=2, chunk_size=2)
        scorer = evaluate._chunk_logsumexp(model)
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

    def test_no_samples_is_a_config_error(self):
        with self.assertRaisesRegex(errors.ConfigError, "num_samples must be >= 1"):
            evaluate.per_shot_log_probs(
                helpers.tiny_model("gmn"), np.zeros([1, 2, 28, 28, 1], np.float32), num_samples=0, seed=0
            )


if __name__ == "__main__":
    absltest.main()
