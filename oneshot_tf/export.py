"""SavedModel export with the serving signatures of SPEC §5.

`export/<model>/<version>/` (TF Serving's layout; version = next integer). Written
to a hidden temporary folder first and renamed, so an interrupted export never
leaves a half-written version behind. Signatures:
  sample(support [b, s, 28, 28, 1], seed int32 [2]) -> probs, images [b, 28, 28, 1]
  log_prob(support, query [b, 28, 28, 1], num_samples int32 [], seed) -> log_prob [b]
Inputs are checked at run time: finite, in [0, 1], matching batch sizes.
"""

import pathlib
import shutil

import tensorflow as tf
from absl import logging

from oneshot_tf import workdir as workdir_lib

_SUPPORT = tf.TensorSpec([None, None, 28, 28, 1], tf.float32, name="support")
_QUERY = tf.TensorSpec([None, 28, 28, 1], tf.float32, name="query")
_SEED = tf.TensorSpec([2], tf.int32, name="seed")
_NUM_SAMPLES = tf.TensorSpec([], tf.int32, name="num_samples")


def _check_pixels(images: tf.Tensor, name: str) -> list:
    return [
        tf.debugging.assert_all_finite(images, f"{name} has NaN or Inf values"),
        tf.debugging.assert_greater_equal(images, 0.0, message=f"{name} values must be in [0, 1] (ink = 1.0)"),
        tf.debugging.assert_less_equal(images, 1.0, message=f"{name} values must be in [0, 1] (ink = 1.0)"),
    ]


class Servable(tf.Module):
    """Wraps a trained model in the serving signatures."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # Tracking the underlying tf.Variables lets the TF1 loader (saved_model_cli,
        # TF Serving) restore them; Keras 3 variables alone are not enough.
        self.model_variables = [getattr(v, "value", v) for v in model.variables]

    @tf.function(input_signature=[_SUPPORT, _SEED])
    def sample(self, support, seed):
        with tf.control_dependencies(_check_pixels(support, "support")):
            probs, images = self.model.sample(tf.identity(support), seed)
        return {"probs": probs, "images": images}

    @tf.function(input_signature=[_SUPPORT, _QUERY, _NUM_SAMPLES, _SEED])
    def log_prob(self, support, query, num_samples, seed):
        checks = _check_pixels(support, "support") + _check_pixels(query, "query")
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(support)[0], tf.shape(query)[0], message="support and query need the same batch size"
            )
        )
        checks.append(tf.debugging.assert_positive(num_samples, message="num_samples must be >= 1"))
        with tf.control_dependencies(checks):
            log_prob = self.model.log_prob(tf.identity(support), tf.identity(query), num_samples, seed)
        return {"log_prob": log_prob}


def next_version(model_dir: pathlib.Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit()] if model_dir.exists() else []
    return max(versions, default=0) + 1


def export_model(model, export_root, model_name: str) -> pathlib.Path:
    """Saves `model` as export_root/<model_name>/<next version>/ and returns that path."""
    model_dir = pathlib.Path(export_root) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    partial = model_dir / f".partial-{version}"
    shutil.rmtree(partial, ignore_errors=True)
    servable = Servable(model)
    signatures = {
        "serving_default": servable.sample.get_concrete_function(),
        "sample": servable.sample.get_concrete_function(),
        "log_prob": servable.log_prob.get_concrete_function(),
    }
    tf.saved_model.save(servable, str(partial), signatures=signatures)
    final = model_dir / str(version)
    partial.rename(final)
    logging.info("Exported %s", final)
    return final


def export(config, workdir) -> pathlib.Path:
    """Exports the latest checkpoint of `workdir` to workdir/export/<model>/<version>/."""
    model, _ = workdir_lib.restore_model(config, workdir)
    return export_model(model, pathlib.Path(workdir) / "export", config.model)
