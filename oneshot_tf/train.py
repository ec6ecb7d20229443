"""The training loop: `train_and_evaluate(config, workdir, data_dir)`.

The inner loop (`steps_per_loop` optimizer steps) runs inside one tf.function; the
outer Python loop logs progress, writes summaries, validates and checkpoints
(orbit's split). The step runs under `strategy.run` with the loss scaled by the
global batch, so a tf.distribute strategy can wrap it unchanged. SIGINT/SIGTERM
finish the current inner loop, save a checkpoint and raise `Interrupted`; running
again in the same workdir resumes from it, data stream included.
"""

import contextlib
import math
import pathlib
import signal
import time

import keras
import tensorflow as tf
from absl import logging

from oneshot_tf import errors, evaluate, models
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, omniglot

SCHEDULES = ("constant", "cosine", "exponential", "burda")


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved, run again to resume")
        self.step = step
        self.signum = signum


class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Scales a learning rate (a float or a schedule) linearly from ~0 to 1 over `warmup_steps`."""

    def __init__(self, learning_rate, warmup_steps: int):
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        base = self.learning_rate(step) if callable(self.learning_rate) else self.learning_rate
        return tf.minimum(1.0, (step + 1.0) / self.warmup_steps) * tf.cast(base, tf.float32)

    def get_config(self):
        inner = self.learning_rate
        return {
            "learning_rate": keras.optimizers.schedules.serialize(inner) if callable(inner) else inner,
            "warmup_steps": self.warmup_steps,
        }


def make_schedule(train_config):
    """The learning rate schedule of `train_config` (a float for `constant` without warm-up)."""
    schedule = _decay(train_config)
    warmup = train_config.warmup_steps
    if warmup < 0:
        raise errors.ConfigError(f"train.warmup_steps must be >= 0, got {warmup}")
    return WarmUp(schedule, warmup) if warmup else schedule


def _decay(train_config):
    lr, steps = train_config.learning_rate, train_config.steps
    if train_config.schedule == "constant":
        return lr
    if train_config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    if train_config.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr, train_config.decay_steps, train_config.decay_rate)
    if train_config.schedule == "burda":
        # Burda et al. (2016), Sec. 5: stage i = 0..7 lasts 3^i epochs at lr * 10^(-i/7);
        # here the stages share `steps` in the same proportions.
        lengths = [3**i for i in range(8)]
        cumulative = [sum(lengths[: i + 1]) / sum(lengths) for i in range(7)]
        boundaries = [max(1, int(c * steps)) for c in cumulative]
        values = [lr * 10 ** (-i / 7) for i in range(8)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    raise errors.ConfigError(f"unknown schedule {train_config.schedule!r}; valid: {', '.join(SCHEDULES)}")


def make_optimizer(train_config) -> keras.optimizers.Optimizer:
    if train_config.grad_clip_norm and train_config.grad_clip_value:
        raise errors.ConfigError("set at most one of train.grad_clip_norm and train.grad_clip_value")
    return keras.optimizers.Adam(
        learning_rate=make_schedule(train_config),
        epsilon=train_config.adam_epsilon,
        global_clipnorm=train_config.grad_clip_norm or None,
        clipvalue=train_config.grad_clip_value or None,
    )


def likelihood_weight(step: tf.Tensor, period: int) -> tf.Tensor:
    """w = 1 + 0.5 ** (step // period): 2 in the first period, then halving towards 1."""
    return 1.0 + tf.pow(0.5, tf.cast(step // period, tf.float32))


def _use_configured_learning_rate(optimizer, train_config):
    """A constant learning rate is a checkpointed variable: the config's wins on resume."""
    if train_config.schedule != "constant" or train_config.warmup_steps:
        return
    restored = float(optimizer.learning_rate.numpy())
    if not math.isclose(restored, train_config.learning_rate, rel_tol=1e-6):
        logging.info(
            "learning rate %g from the config replaces %g from the checkpoint", train_config.learning_rate, restored
        )
        optimizer.learning_rate.assign(train_config.learning_rate)


@contextlib.contextmanager
def _stop_on_signals():
    """Yields a dict whose `signum` is set when SIGINT or SIGTERM arrives."""
    state = {"signum": None}

    def handler(signum, frame):
        del frame
        logging.warning("Signal %d: stopping after the current inner loop and saving a checkpoint", signum)
        state["signum"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def training_data(config, characters, start: int = 0) -> tuple:
    """(training characters after augmentation, endless episode dataset from batch `start`)."""
    if config.data.augment_turns or config.data.augment_flips:
        characters = omniglot.with_turns_and_flips(
            characters, turns=config.data.augment_turns, flips=config.data.augment_flips
        )
    dataset = episodes.episode_dataset(
        characters,
        batch_size=config.data.batch_size,
        set_size=config.data.set_size,
        num_classes=config.data.num_classes,
        class_mix=config.data.class_mix,
        binarization=config.data.binarization,
        dilation_probability=config.data.dilation_probability,
        seed=config.seed,
        start=start,
    )
    return characters, dataset


def make_train_steps(model, optimizer, step: tf.Variable, config, strategy):
    """The inner loop: a tf.function (iterator, num_steps) -> (mean loss in nats/image,
    mean gradient norm before clipping, steps skipped), the means over the steps taken.
    The loss is the negative bound; the gradient is that of the weighted objective
    when `train.likelihood_weight_period` is set.

    Each step runs `strategy.run` on one global batch, with the loss scaled by the
    global batch so the replicas' sum is the mean; `step` counts batches consumed
    and seeds the model's sampling. A step whose loss or gradient is not finite on
    any replica is skipped: the weights and the optimizer state stay as they were
    (`bad_streak`, a variable the function keeps, counts such steps in a row).
    """
    items_per_step = config.data.batch_size * config.data.set_size
    trainable = model.trainable_variables
    period = config.train.likelihood_weight_period
    if period and not model.separable_elbo:
        raise errors.ConfigError(
            f"train.likelihood_weight_period needs a model that splits its bound; {config.model} does not"
        )

    def step_fn(images, seed, weight):
        context = tf.distribute.get_replica_context()
        seed = tf.random.experimental.stateless_fold_in(seed, context.replica_id_in_sync_group)
        with tf.GradientTape() as tape:
            if period:
                log_likelihood, kl = model.elbo_terms(images, seed, training=True)
                loss = -tf.reduce_sum(log_likelihood - kl) / items_per_step
                objective = -tf.reduce_sum(weight * log_likelihood - kl / weight) / items_per_step
            else:
                loss = objective = -tf.reduce_sum(model.elbo(images, seed, training=True)) / items_per_step
        gradients = tape.gradient(objective, trainable)
        norm = tf.linalg.global_norm(gradients)
        # The global norm is finite only if every gradient is; all replicas agree to skip.
        bad = tf.cast(~(tf.math.is_finite(loss) & tf.math.is_finite(norm)), tf.float32)
        any_bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad) > 0

        def apply():
            optimizer.apply_gradients(zip(gradients, trainable))
            return tf.constant(True)

        taken = tf.cond(any_bad, lambda: tf.constant(False), apply)
        return tf.where(taken, loss, 0.0), tf.where(taken, norm, 0.0), taken

    # XLA-compiling the step (not the loop, whose iterator XLA cannot compile) is a
    # config choice: whether it pays depends on the model and the device (README "Speed").
    compiled_step = tf.function(step_fn, jit_compile=config.train.jit_compile)

    bad_streak = tf.Variable(0, dtype=tf.int64, trainable=False)

    @tf.function
    def train_steps(iterator, num_steps):
        loss_sum, norm_sum, taken_sum = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(num_steps):
            batch = next(iterator)
            seed = tf.cast(tf.stack([tf.constant(config.seed, tf.int64), step % (2**31 - 1)]), tf.int32)
            weight = likelihood_weight(step, period) if period else tf.constant(1.0)
            loss, norm, taken = strategy.run(compiled_step, args=(batch["images"], seed, weight))
            loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            # The replicas' mean of their own gradients' norms: the global norm with one replica.
            norm_sum += strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None)
            # Replicas agree on skipping (step_fn all-reduces), so the mean is 0 or 1.
            taken = strategy.reduce(tf.distribute.ReduceOp.MEAN, tf.cast(taken, tf.float32), axis=None)
            taken_sum += taken
            bad_streak.assign(tf.where(taken > 0, tf.constant(0, tf.int64), bad_streak + 1))
            step.assign_add(1)
        taken_steps = tf.maximum(taken_sum, 1.0)
        skipped = tf.cast(num_steps, tf.float32) - taken_sum
        return loss_sum / taken_steps, norm_sum / taken_steps, skipped

    train_steps.bad_streak = bad_streak
    return train_steps


def train_and_evaluate(config, workdir, data_dir) -> int:
    """Trains `config.model` in `workdir`, resuming from its latest checkpoint.

    The model computes in the current Keras dtype policy, which the entry point
    sets once from `config.precision` (`precision.set_policy`).

    Args:
      config: a config from configs/<model>.py.
      workdir: output folder (see oneshot_tf/workdir.py).
      data_dir: folder with an Omniglot source.

    Returns:
      The step reached.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    keras.utils.set_random_seed(config.seed)
    splits = omniglot.load_configured_splits(config.data, data_dir, config.seed)
    total_steps = config.train.steps

    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = models.build_model(config.model, **config.model_kwargs.to_dict())
        optimizer = make_optimizer(config.train)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
    # Saved with every checkpoint so a resumed run only keeps a better one.
    best_val_bound = tf.Variable(-math.inf, dtype=tf.float64, trainable=False)
    checkpoint = workdir_lib.make_checkpoint(model, optimizer=optimizer, step=step, best_val_bound=best_val_bound)
    manager = tf.train.CheckpointManager(
        checkpoint, workdir / workdir_lib.CHECKPOINTS, max_to_keep=config.train.max_checkpoints, step_counter=step
    )
    best_manager = tf.train.CheckpointManager(
        checkpoint, workdir / workdir_lib.BEST_CHECKPOINT, max_to_keep=1, step_counter=step
    )
    restored = workdir_lib.restore_newest_readable(checkpoint, manager.checkpoints)
    start = int(step.numpy())
    if restored:
        logging.info("Resumed from %s at step %d", restored, start)
        _use_configured_learning_rate(optimizer, config.train)
    if start >= total_steps:
        logging.info("Already trained: step %d >= train.steps %d", start, total_steps)
        return start

    train_characters, dataset = training_data(config, splits["train"], start)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    items_per_step = config.data.batch_size * config.data.set_size
    train_steps = make_train_steps(model, optimizer, step, config, strategy)

    val = episodes.fixed_episodes(
        splits["val"],
        num_episodes=config.train.val_episodes,
        set_size=config.data.set_size,
        num_classes=config.data.num_classes,
        class_mix=config.data.class_mix,
        seed=config.seed,
    )
    grid_support = episodes.fixed_episodes(
        splits["val"], num_episodes=config.sample.rows, set_size=config.sample.shots, seed=config.seed
    )["images"]
    writer = tf.summary.create_file_writer(str(workdir / "tensorboard" / "train"))
    logging.info(
        "Training %s on %d characters from step %d to %d: batch %d episodes x %d items, %d parameters",
        config.model,
        len(train_characters),
        start,
        total_steps,
        config.data.batch_size,
        config.data.set_size,
        sum(math.prod(v.shape) for v in model.trainable_variables),
    )
    logging.info(
        "Tracing and compiling the training step (the first %d steps include it; it can take minutes)",
        min(config.train.steps_per_loop, total_steps - start),
    )
    current, last_save, run_start = start, time.time(), time.time()
    # The ETA counts steady-state loops only: the first loop includes tracing.
    steady_steps, steady_seconds = 0, 0.0
    skipped_total, recovered_from = 0, None

    def save(manager_to_use):
        try:
            manager_to_use.save(checkpoint_number=int(step.numpy()))
        except (OSError, tf.errors.OpError) as e:
            raise errors.CheckpointError(
                f"could not save a checkpoint in {manager_to_use.directory} ({e}); the previous one, "
                f"{manager.latest_checkpoint}, is intact: free space (or fix permissions) and run again to resume"
            ) from e

    with _stop_on_signals() as stop, writer.as_default():
        while current < total_steps and stop["signum"] is None:
            num_steps = min(config.train.steps_per_loop, total_steps - current)
            loop_start = time.time()
            loss, grad_norm, skipped = (float(x) for x in train_steps(iterator, tf.constant(num_steps)))
            previous, current = current, int(step.numpy())
            if skipped:
                skipped_total += int(skipped)
                logging.warning(
                    "steps %d-%d: skipped %d with a non-finite loss or gradient (%d in this run)",
                    previous + 1,
                    current,
                    skipped,
                    skipped_total,
                )
                tf.summary.scalar("train/skipped_steps", skipped, step=current)
            bad_streak = int(train_steps.bad_streak.numpy())
            if bad_streak >= config.train.max_bad_steps:
                latest = manager.latest_checkpoint
                if recovered_from is not None or latest is None:
                    raise FloatingPointError(
                        f"{bad_streak} steps in a row had a non-finite loss or gradient "
                        f"at step {current}"
                        + (f", again after restoring {recovered_from}" if recovered_from else ", and no checkpoint")
                        + "; nothing non-finite was applied or saved. Lower train.learning_rate, set "
                        "train.grad_clip_norm or train.warmup_steps, or check the data"
                    )
                logging.warning(
                    "%d steps in a row were non-finite: restoring %s and going on from there (once)",
                    bad_streak,
                    latest,
                )
                workdir_lib.restore_newest_readable(checkpoint, [latest])
                recovered_from, current = latest, int(step.numpy())
                train_steps.bad_streak.assign(0)
                _, dataset = training_data(config, splits["train"], current)
                iterator = iter(strategy.experimental_distribute_dataset(dataset))
                continue
            now = time.time()
            steps_per_sec = num_steps / (now - loop_start)
            if previous == start:
                logging.info("First %d steps (with tracing) took %s", num_steps, _format_seconds(now - loop_start))
            else:
                steady_steps, steady_seconds = steady_steps + num_steps, steady_seconds + now - loop_start
            eta = (total_steps - current) * steady_seconds / steady_steps if steady_steps else float("inf")
            logging.info(
                "step %d/%d  loss %s nats/image  grad norm %s  %.1f steps/s  %.0f images/s  ETA %s",
                current,
                total_steps,
                f"{loss:.3f}" if skipped < num_steps else "n/a",
                f"{grad_norm:.3g}" if skipped < num_steps else "n/a",
                steps_per_sec,
                steps_per_sec * items_per_step,
                _format_seconds(eta),
            )
            if skipped < num_steps:  # Means over the steps taken; none were taken otherwise.
                tf.summary.scalar("train/loss", loss, step=current)
                tf.summary.scalar("train/grad_norm", grad_norm, step=current)
            tf.summary.scalar("train/steps_per_sec", steps_per_sec, step=current)
            tf.summary.scalar("train/learning_rate", float(optimizer.learning_rate), step=current)
            every = config.train.eval_every
            if every and (current // every > previous // every or current == total_steps):
                val_bound = evaluate.mean_bound(model, val["images"], seed=config.seed)
                improved = val_bound > float(best_val_bound.numpy())
                logging.info(
                    "step %d  validation bound %.3f nats/image%s",
                    current,
                    val_bound,
                    "  (best so far: saved)" if improved else f"  (best {float(best_val_bound.numpy()):.3f})",
                )
                tf.summary.scalar("val/bound", val_bound, step=current)
                if improved:
                    best_val_bound.assign(val_bound)
                    save(best_manager)
                grid = evaluate.sample_grid(model, grid_support, config.sample, current)
                tf.summary.image("samples", grid[None, ..., None], step=current)
            if now - last_save > config.train.checkpoint_every_secs:
                save(manager)
                last_save = now
        save(manager)
        writer.flush()
    if stop["signum"] is not None and current < total_steps:
        raise Interrupted(current, stop["signum"])
    logging.info(
        "Trained to step %d in %s%s",
        current,
        _format_seconds(time.time() - run_start),
        f" ({skipped_total} non-finite steps skipped)" if skipped_total else "",
    )
    return current
