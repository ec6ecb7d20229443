"""An exponential moving average of a model's weights, for evaluation (train.ema_decay).

Every optimizer step (a skipped, non-finite step is not one) moves the averages
towards the model's variables:

  average <- average - (1 - d_n) * (average - weight),  d_n = min(decay, (1 + n) / (10 + n))

after n earlier updates (the warm-up of tf.train.ExponentialMovingAverage: early
averages follow the weights quickly instead of remembering the initialisation).
Every floating-point variable of the model is averaged, the batch norms' moving
statistics as well as the trainable weights, so that the averaged network's
statistics come from the same stretch of training as its weights.

The averages live in the training checkpoint (`weight_average/averages/<i>`, in
`averaged_variables` order); `workdir.restore_model` loads them in place of the
trained weights, so evaluation, sampling and export use them.
"""

import contextlib

import tensorflow as tf

from oneshot_tf import errors

# Where the averages live in a checkpoint.
CHECKPOINT_KEY = "weight_average"


def averaged_variables(model) -> list:
    """The model's floating-point variables (keras.Variable), in the model's order."""
    return [v for v in model.variables if tf.as_dtype(v.dtype).is_floating]


def read_averages(prefix: str, variables, updates: tf.Variable | None = None) -> bool:
    """Reads the averages saved in checkpoint `prefix` into `variables` (tf.Variables in
    `averaged_variables` order) and, if given, the update count into `updates`. False,
    with nothing read, when the checkpoint has no weight average."""
    saved = {"averages": list(variables)} | ({"updates": updates} if updates is not None else {})
    status = tf.train.Checkpoint(**{CHECKPOINT_KEY: tf.train.Checkpoint(**saved)}).restore(prefix).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        return False
    return True


class WeightAverage:
    """The moving averages of a model's variables. Build it under the model's
    distribution strategy scope; `update` in cross-replica context (the trainer's
    apply step), `applied` outside tf.function."""

    def __init__(self, model, decay: float):
        if not 0.0 < decay < 1.0:
            raise errors.ConfigError(f"train.ema_decay must be in (0, 1) (0 disables the average), got {decay}")
        self.decay = decay
        self._weights = averaged_variables(model)
        self.averages = [
            tf.Variable(w.value, trainable=False, name=f"average_{i}") for i, w in enumerate(self._weights)
        ]
        # Updates made: the warm-up's n.
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(averages=self.averages, updates=self.updates)

    def update(self):
        """One step of the average towards the current weights."""
        n = tf.cast(self.updates, tf.float32)
        decay = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + n) / (10.0 + n))
        for average, weight in zip(self.averages, self._weights):
            average.assign_sub((1.0 - decay) * (average - tf.cast(weight.value, average.dtype)))
        self.updates.assign_add(1)

    def restart(self):
        """Starts the average afresh from the current weights (n = 0)."""
        for average, weight in zip(self.averages, self._weights):
            average.assign(weight.value)
        self.updates.assign(0)

    def restore(self, prefix: str) -> bool:
        """Reads the averages saved in checkpoint `prefix`; False, with the averages
        restarted from the current weights, when it has none (a run trained without
        an average until now)."""
        if read_averages(prefix, self.averages, self.updates):
            return True
        self.restart()
        return False

    @contextlib.contextmanager
    def applied(self):
        """Within the block the model holds the averages; after it, its own weights again.

        Under a strategy with per-replica batch-norm statistics the replicas get back
        their mean (what a checkpoint holds too), not each its own.
        """
        kept = [tf.identity(w.value) for w in self._weights]
        for weight, average in zip(self._weights, self.averages):
            weight.assign(average)
        try:
            yield
        finally:
            for weight, value in zip(self._weights, kept):
                weight.assign(value)
