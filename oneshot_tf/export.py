"""SavedModel export with the serving signatures of SPEC §5.

`export/<model>/<version>/` (TF Serving's layout; version = next integer). Written
to a hidden temporary folder first and renamed, so an interrupted export never
leaves a half-written version behind. Signatures:
  sample(support [b, s, 28, 28, 1], seed int32 [2]) -> probs, images [b, 28, 28, 1]
  log_prob(support, query [b, 28, 28, 1], num_samples int32 [], seed) -> log_prob [b]
Inputs are checked at run time: finite, in [0, 1], matching batch sizes, bounded
(MAX_BATCH, MAX_SHOTS, MAX_NUM_SAMPLES; log_prob scores in passes of bounded size). A support
of shape [batch, 0] (how JSON spells zero shots: `[[], []]`) means [batch, 0, 28, 28, 1].

`config.export.weights_dtype = "float16"` stores the floating-point weights in half
precision (half the size on disk; the signatures compute in the model's own
precision from the rounded weights). A variable with a value beyond the half type's
range (float16 ends at 65504: batch norms' moving variances can pass it) is stored
as it is, not as infinities.

`export()` also writes `<version>/assets.extra/training.json` (TRAINING_RECORD: the
model, its model_kwargs, the checkpoint and its step, the steps trained in all, the
weights and the code commit), so that a version folder copied on its own still says
what it holds. TF Serving and the SavedModel loaders leave assets.extra/ alone.
"""

import contextlib
import pathlib
import shutil

import keras
import tensorflow as tf
from absl import logging

from oneshot_tf import errors, provenance
from oneshot_tf import workdir as workdir_lib

# Shapes are checked inside the graph rather than declared, so every loader (Python,
# saved_model_cli, TF Serving) reports a wrong rank or size with the same message.
_SUPPORT = tf.TensorSpec(None, tf.float32, name="support")
_QUERY = tf.TensorSpec(None, tf.float32, name="query")
_SEED = tf.TensorSpec([2], tf.int32, name="seed")
_NUM_SAMPLES = tf.TensorSpec([], tf.int32, name="num_samples")
_SHAPES = {"support": "[batch, shots, 28, 28, 1]", "query": "[batch, 28, 28, 1]"}
# Bounds that keep one call's memory bounded whatever a client sends: log_prob scores at
# most MAX_WEIGHTS_PER_PASS (query, sample) pairs at once and loops over the rest.
MAX_BATCH = 4096
MAX_SHOTS = 100
MAX_NUM_SAMPLES = 100_000
MAX_WEIGHTS_PER_PASS = 2048
WEIGHTS_DTYPES = ("float32", "float16", "bfloat16")
# Inside a version folder; assets.extra/ is SavedModel's folder for files no graph reads.
TRAINING_RECORD = pathlib.Path("assets.extra") / "training.json"


def _require(condition: tf.Tensor, tensor: tf.Tensor, message: str) -> tf.Tensor:
    """`tensor`, or an InvalidArgumentError with `message` if `condition` is false.

    A data dependency (through tf.cond), not a control dependency: nothing computed
    from the returned tensor can run, and fail less clearly, before the check.
    """

    def fail():
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.identity(tensor)

    return tf.cond(condition, lambda: tf.identity(tensor), fail)


def _checked(images: tf.Tensor, name: str) -> tf.Tensor:
    """images, after run-time checks of shape and values, with its static shape set."""
    rank = _SHAPES[name].count(",") + 1
    message = f"{name} must be float32 {_SHAPES[name]} with values in [0, 1] (ink = 1.0)"
    if name == "support":
        # JSON cannot spell an empty [batch, 0, 28, 28, 1]: zero shots arrive as [[], ...].
        zero_shots = tf.logical_and(tf.equal(tf.rank(images), 2), tf.equal(tf.size(images), 0))
        images = tf.cond(zero_shots, lambda: tf.reshape(images, [tf.shape(images)[0], 0, 28, 28, 1]), lambda: images)
    shape = tf.shape(images)
    last_three = tf.concat([tf.zeros([3], tf.int32), shape], axis=0)[-3:]
    shape_ok = tf.logical_and(tf.equal(tf.size(shape), rank), tf.reduce_all(tf.equal(last_three, [28, 28, 1])))
    images = tf.ensure_shape(_require(shape_ok, images, message), [None] * (rank - 3) + [28, 28, 1])
    images = _require(tf.reduce_all(tf.math.is_finite(images)), images, f"{name} has NaN or Inf values")
    images = _require(tf.reduce_all((images >= 0.0) & (images <= 1.0)), images, message)
    images = _require(tf.shape(images)[0] <= MAX_BATCH, images, f"{name} batch must be <= {MAX_BATCH}")
    if name == "support":
        images = _require(tf.shape(images)[1] <= MAX_SHOTS, images, f"support shots must be <= {MAX_SHOTS}")
    return images


def _checked_seed(seed: tf.Tensor) -> tf.Tensor:
    """seed, if it is [2] (a loaded signature checks its dtype, not always its shape)."""
    shape_ok = tf.logical_and(tf.equal(tf.rank(seed), 1), tf.equal(tf.size(seed), 2))
    return tf.ensure_shape(_require(shape_ok, seed, "seed must be int32 [2]"), [2])


class Servable(tf.Module):
    """Wraps a trained model in the serving signatures.

    `stored`: None (the signatures read the model's variables), or one tf.Variable per
    model variable, any dtype, that the signatures read instead (cast to the model
    variable's dtype): how weights stored in half precision are served.
    """

    def __init__(self, model, stored: list | None = None):
        super().__init__()
        # Not an attribute tf.Module would track: a tracked Keras 3 model saves its
        # variables a second time (as Keras variables), doubling the SavedModel.
        self._model = lambda: model
        self._stored = lambda: stored

    def _weights(self):
        """Inside a signature: where the model's variables are read from. The casts of
        stored weights happen where this is called (once per call, not per chunk)."""
        stored = self._stored()
        if stored is None:
            return contextlib.nullcontext()
        variables = self._model().variables
        return keras.StatelessScope(state_mapping=[(v, tf.cast(s, v.dtype)) for v, s in zip(variables, stored)])

    @tf.function(input_signature=[_SUPPORT, _SEED])
    def sample(self, support, seed):
        support, seed = _checked(support, "support"), _checked_seed(seed)

        def draw():
            with self._weights():
                return self._model().sample(support, seed)

        def nothing():  # Batch 0: the distributions cannot even be sampled.
            return tf.zeros([0, 28, 28, 1]), tf.zeros([0, 28, 28, 1])

        probs, images = tf.cond(tf.shape(support)[0] > 0, draw, nothing)
        return {
            "probs": tf.ensure_shape(probs, [None, 28, 28, 1]),
            "images": tf.ensure_shape(images, [None, 28, 28, 1]),
        }

    @tf.function(input_signature=[_SUPPORT, _QUERY, _NUM_SAMPLES, _SEED])
    def log_prob(self, support, query, num_samples, seed):
        support, query, seed = _checked(support, "support"), _checked(query, "query"), _checked_seed(seed)
        same_batch = tf.equal(tf.shape(support)[0], tf.shape(query)[0])
        query = _require(same_batch, query, "support and query need the same batch size")
        num_samples = _require(num_samples >= 1, num_samples, "num_samples must be >= 1")
        num_samples = _require(num_samples <= MAX_NUM_SAMPLES, num_samples, f"num_samples must be <= {MAX_NUM_SAMPLES}")
        log_prob = tf.cond(
            tf.shape(query)[0] > 0,
            lambda: self._chunked_log_prob(support, query, num_samples, seed),
            lambda: tf.zeros([0]),
        )
        return {"log_prob": tf.ensure_shape(log_prob, [None])}

    def _chunked_log_prob(self, support, query, num_samples, seed):
        """model.log_prob, at most MAX_WEIGHTS_PER_PASS weights at a time: the same
        numbers (same seed) when they fit in one pass; otherwise pass c is seeded with
        fold_in(seed, c) and the passes are combined by a running log-sum-exp."""
        batch = tf.shape(query)[0]
        weights_scope = self._weights()
        chunk = tf.maximum(1, tf.minimum(num_samples, MAX_WEIGHTS_PER_PASS // tf.maximum(batch, 1)))
        num_chunks = (num_samples + chunk - 1) // chunk

        def body(c, total):
            size = tf.minimum(chunk, num_samples - c * chunk)
            chunk_seed = tf.where(num_chunks == 1, seed, tf.random.experimental.stateless_fold_in(seed, c))
            with weights_scope:
                weights = tf.cast(self._model().log_weights(support, query, size, chunk_seed), tf.float32)
            return c + 1, tf.experimental.numpy.logaddexp(total, tf.reduce_logsumexp(weights, axis=0))

        initial = tf.fill([batch], tf.constant(-float("inf")))
        _, total = tf.while_loop(lambda c, _: c < num_chunks, body, (tf.constant(0), initial))
        return total - tf.math.log(tf.cast(num_samples, tf.float32))


def next_version(model_dir: pathlib.Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit()] if model_dir.exists() else []
    return max(versions, default=0) + 1


def check_weights_dtype(weights_dtype: str) -> None:
    """Raises ConfigError unless `weights_dtype` is one of WEIGHTS_DTYPES."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise errors.ConfigError(
            f"config.export.weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {weights_dtype!r}"
        )


def _stored(variable: tf.Variable, dtype: tf.DType) -> tf.Variable:
    """`variable` as exported with weights of `dtype`: a copy in `dtype` if it is
    floating and every value fits in `dtype`'s range, else itself."""
    if not variable.dtype.is_floating or tf.reduce_max(tf.abs(variable)) > dtype.max:
        return variable
    return tf.Variable(tf.cast(variable, dtype), trainable=False, name=variable.name.split(":")[0])


def export_model(
    model, export_root, model_name: str, weights_dtype: str = "float32", training: dict | None = None
) -> pathlib.Path:
    """Saves `model` as export_root/<model_name>/<next version>/ and returns that path.

    `weights_dtype`: of the stored floating-point weights (WEIGHTS_DTYPES).
    `training`: written (with `weights_dtype`) as the version's TRAINING_RECORD, if given.
    """
    check_weights_dtype(weights_dtype)
    model_dir = pathlib.Path(export_root) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    for stale in model_dir.glob(".partial-*"):  # Left by an interrupted export.
        shutil.rmtree(stale, ignore_errors=True)
    partial = model_dir / f".partial-{version}"

    def trace(servable):
        return servable.sample.get_concrete_function(), servable.log_prob.get_concrete_function()

    if weights_dtype == "float32" or not model.variables:
        sample, log_prob = trace(Servable(model))  # Builds a model not yet built.
    variables = [v.value for v in model.variables]
    if weights_dtype != "float32":
        variables = [_stored(v, tf.as_dtype(weights_dtype)) for v in variables]
        kept = sum(v.dtype != weights_dtype for v in variables if v.dtype.is_floating)
        if kept:
            logging.info("%d variables kept their dtype: values beyond %s's range", kept, weights_dtype)
        sample, log_prob = trace(Servable(model, variables))
    signatures = {"serving_default": sample, "sample": sample, "log_prob": log_prob}
    # The saved root holds the variables and the signatures only: saving the Servable
    # would also store its tf.functions, which TF retraces for that (in its save
    # context), a second copy of every graph in saved_model.pb. The underlying
    # tf.Variables, not Keras 3's, so the TF1 loader (saved_model_cli, TF Serving)
    # restores them.
    root = tf.Module()
    root.model_variables = variables
    verbosity = logging.get_verbosity()
    # TF logs (absl, INFO) every input it renames in a signature: with a tf.cond (a
    # dynamic number of shots) that is every captured variable, hundreds on one line.
    logging.set_verbosity(min(verbosity, logging.WARNING))
    try:
        tf.saved_model.save(root, str(partial), signatures=signatures)
    finally:
        logging.set_verbosity(verbosity)
    if training is not None:
        (partial / TRAINING_RECORD).parent.mkdir()
        workdir_lib.write_json(partial / TRAINING_RECORD, {**training, "weights_dtype": weights_dtype})
    final = model_dir / str(version)
    partial.rename(final)
    logging.info("Exported %s", final)
    return final


def export(config, workdir, *, restored=None) -> pathlib.Path:
    """Exports the config.eval.checkpoint checkpoint of `workdir` to workdir/export/<model>/<version>/.

    `restored`: from workdir.restore_model, if the caller has it.
    """
    restored = restored or workdir_lib.restore_model(config, workdir)
    training = {
        "model": config.model,
        "model_kwargs": config.model_kwargs.to_dict(),
        **workdir_lib.restored_record(restored, workdir),
        "code_commit": provenance.code_commit(),
    }
    return export_model(
        restored.model, pathlib.Path(workdir) / workdir_lib.EXPORT, config.model, config.export.weights_dtype, training
    )
