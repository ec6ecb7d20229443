"""Hostile inputs to the serving signatures, fuzzed with hypothesis: every call gives a
correct result or a documented error, the process survives, memory stays bounded."""

import pathlib
import resource

import hypothesis
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from hypothesis import strategies as st

from oneshot_tf import export, models
from tests import helpers

# The messages the signatures document (README "Serving"), and what TF itself says when
# an input does not match a declared dtype or shape (seed int32 [2], num_samples int32 []).
DOCUMENTED = (
    "must be float32 [batch",
    "has NaN or Inf values",
    "need the same batch size",
    "num_samples must be >= 1",
    f"num_samples must be <= {export.MAX_NUM_SAMPLES}",
    f"batch must be <= {export.MAX_BATCH}",
    f"shots must be <= {export.MAX_SHOTS}",
    "seed must be int32 [2]",
)
SPEC_MISMATCH = ("expected", "cannot", "Cannot", "incompatible", "Incompatible", "shape", "dtype", "Could not")

_LOADED = {}


def _signatures():
    if "model" not in _LOADED:
        config = helpers.tiny_config("vae")
        model = models.build_model(config.model, **config.model_kwargs.to_dict())
        root = pathlib.Path(tf.compat.v1.test.get_temp_dir()) / "fuzz_export"
        _LOADED["model"] = tf.saved_model.load(str(export.export_model(model, root, "vae")))
    return _LOADED["model"].signatures


DIMS = st.sampled_from([0, 1, 2, 3, 7])
DEFECTS = st.sampled_from(["none"] * 7 + ["rank", "tail", "dtype", "nan", "inf", "negative", "above_one"])


@st.composite
def images(draw, leading: int, batch: int | None = None):
    """Images [*leading dims, 28, 28, 1] in {0, 1}, or (half the time) with one defect."""
    lead = [draw(DIMS) if batch is None else batch] + [draw(DIMS) for _ in range(leading - 1)]
    defect = draw(DEFECTS)
    shape = {
        "rank": tuple(lead[:-1] if leading > 1 and draw(st.booleans()) else lead + [2]) + (28, 28, 1),
        "tail": tuple(lead) + draw(st.sampled_from([(28, 28), (14, 14, 1), (28, 28, 3), (1,)])),
    }.get(defect, tuple(lead) + (28, 28, 1))
    array = (np.random.default_rng(draw(st.integers(0, 9))).uniform(0, 1, shape) < 0.2).astype(np.float32)
    if array.size:
        array.flat[draw(st.integers(0, array.size - 1))] = {
            "nan": np.nan,
            "inf": np.inf,
            "negative": -0.5,
            "above_one": 3.0,
        }.get(defect, 1.0)
    if defect == "dtype":
        array = array.astype(draw(st.sampled_from([np.float64, np.int32, np.uint8])))
    return array


SEEDS = st.sampled_from(
    [np.array([1, 2], np.int32)] * 6 + [np.array([1, 2, 3], np.int32), np.array(5, np.int32), np.array([1.0, 2.0])]
)
NUM_SAMPLES = st.sampled_from([1, 3, 17] * 2 + [0, -4, export.MAX_NUM_SAMPLES + 1, 2**31 - 1]).map(np.int32)


def _call(signature, **inputs):
    """(outputs, None) or (None, error message); anything else propagates and fails."""
    try:
        return signature(**{k: tf.constant(v) for k, v in inputs.items()}), None
    except tf.errors.InvalidArgumentError as e:
        return None, e.message
    except (TypeError, ValueError) as e:  # The declared input signature refused it.
        return None, str(e)


def _valid_images(array, rank) -> bool:
    return bool(
        array.dtype == np.float32
        and array.ndim == rank
        and array.shape[-3:] == (28, 28, 1)
        and np.all(np.isfinite(array))
        and np.all((array >= 0) & (array <= 1))
    )


def _check_error(test, message):
    test.assertTrue(any(m in message for m in DOCUMENTED + SPEC_MISMATCH), f"undocumented error: {message[:500]}")


class FuzzTest(tf.test.TestCase):
    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(support=images(2), seed=SEEDS)
    def test_sample(self, support, seed):
        hypothesis.event("valid" if _valid_images(support, 5) and seed.shape == (2,) else "invalid")
        out, error = _call(_signatures()["sample"], support=support, seed=seed)
        valid = _valid_images(support, 5) and seed.dtype == np.int32 and seed.shape == (2,)
        if valid:
            self.assertIsNone(error, error)
            self.assertEqual(out["probs"].shape, (support.shape[0], 28, 28, 1))
            self.assertTrue(np.all(np.isfinite(out["probs"])))
        else:
            self.assertIsNone(out, f"accepted invalid support {support.dtype} {support.shape}")
            _check_error(self, error)

    @hypothesis.settings(max_examples=80, deadline=None, derandomize=True)
    @hypothesis.given(data=st.data(), num_samples=NUM_SAMPLES, seed=SEEDS)
    def test_log_prob(self, data, num_samples, seed):
        batch = data.draw(DIMS)
        support = data.draw(images(2, batch))
        query = data.draw(images(1, data.draw(st.sampled_from([batch] * 5 + [batch + 1]))))
        out, error = _call(_signatures()["log_prob"], support=support, query=query, num_samples=num_samples, seed=seed)
        valid = (
            _valid_images(support, 5)
            and _valid_images(query, 4)
            and support.shape[0] == query.shape[0]
            and 1 <= num_samples <= export.MAX_NUM_SAMPLES
            and seed.dtype == np.int32
            and seed.shape == (2,)
        )
        hypothesis.event("valid" if valid else "invalid")
        if valid:
            self.assertIsNone(error, error)
            self.assertEqual(out["log_prob"].shape, (query.shape[0],))
            self.assertTrue(np.all(np.isfinite(out["log_prob"])) and np.all(out["log_prob"].numpy() < 0))
        else:
            self.assertIsNone(out, "accepted an invalid request")
            _check_error(self, error)

    def test_largest_request_runs_in_bounded_passes_and_memory(self):
        log_prob = _signatures()["log_prob"]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        support = helpers.random_images([4, 3, 28, 28, 1])
        query = helpers.random_images([4, 28, 28, 1], 1)
        out = log_prob(
            support=support, query=query, num_samples=tf.constant(export.MAX_NUM_SAMPLES), seed=tf.constant([0, 0])
        )
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        self.assertTrue(np.all(np.isfinite(out["log_prob"])))
        self.assertLess(grown_mb, 500)
        # Several passes estimate the same quantity as one: close at this K.
        one_pass = log_prob(support=support, query=query, num_samples=tf.constant(500), seed=tf.constant([0, 0]))
        self.assertAllClose(out["log_prob"], one_pass["log_prob"], atol=1.0)


if __name__ == "__main__":
    absltest.main()
