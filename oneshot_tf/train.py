"""The training loop: `train_and_evaluate(config, workdir, data_dir[, strategy])`.

Orbit's split: `Trainer` holds the state (model, optimizer, step under the
strategy's scope) and the inner loop (`steps_per_loop` optimizer steps in one
tf.function); `train_and_evaluate` is the outer Python loop that logs progress,
writes summaries, validates and checkpoints. SIGINT/SIGTERM finish the current inner
loop, save a checkpoint and raise `Interrupted`; running again in the same workdir
resumes from it, data stream included.
"""

import collections
import contextlib
import functools
import math
import pathlib
import signal
import statistics
import time

import keras
import tensorflow as tf
from absl import logging

from oneshot_tf import classify, distribute, errors, evaluate, models, provenance, warm_start, weight_average
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, few_shot, omniglot

SCHEDULES = ("constant", "cosine", "cosine_tail", "exponential", "burda")


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


class CosineTail(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate` until `decay_start`, then a cosine decay to 0 at `steps`: a run
    at a constant rate can go on to an annealed end from any of its checkpoints."""

    def __init__(self, learning_rate: float, decay_start: int, steps: int):
        self.learning_rate = learning_rate
        self.decay_start = decay_start
        self.steps = steps

    def __call__(self, step):
        progress = (tf.cast(step, tf.float32) - self.decay_start) / (self.steps - self.decay_start)
        progress = tf.clip_by_value(progress, 0.0, 1.0)
        return self.learning_rate * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "decay_start": self.decay_start, "steps": self.steps}


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
    if train_config.schedule == "cosine_tail":
        if not 0 <= train_config.decay_start < steps:
            raise errors.ConfigError(
                f"train.decay_start must be in [0, train.steps = {steps}) for cosine_tail, got {train_config.decay_start}"
            )
        return CosineTail(lr, train_config.decay_start, steps)
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
    """Adam with the configured schedule; the Trainer clips gradients itself, after
    summing them over replicas."""
    return keras.optimizers.Adam(learning_rate=make_schedule(train_config), epsilon=train_config.adam_epsilon)


_SAVED_LEARNING_RATE = "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"


def optimizer_as_saved(optimizer: keras.optimizers.Optimizer, prefix: str):
    """`optimizer`, or a view of its variables laid out as in the checkpoint at `prefix`.

    Keras keeps a float learning rate as the second of an optimizer's variables (after
    the step count) and a schedule as none, so a run resumed with the other kind (a
    constant rate, then `cosine_tail`) finds every moment one index off. The view puts
    the step count and moments at the saved indices; a saved rate is read into a
    throw-away variable (the schedule decides), a missing one leaves the configured rate.
    """
    saved_rate = any(name == _SAVED_LEARNING_RATE for name, _ in tf.train.list_variables(prefix))
    has_rate = isinstance(optimizer.learning_rate, keras.Variable)
    if saved_rate == has_rate:
        return optimizer
    iterations, *rest = [v.value for v in optimizer.variables]
    view = tf.Module()
    view._iterations = iterations
    if saved_rate:
        view._learning_rate = tf.Variable(0.0, trainable=False)
        view._variables = [iterations, view._learning_rate, *rest]
    else:
        view._variables = [iterations, *rest[1:]]
    return view


def scored_sets(images: tf.Tensor, seed: tf.Tensor, prefix_sizes: tuple) -> list:
    """The sets a training step scores: (sets, seed) pairs.

    The batch `images` [batch, set_size, 28, 28, 1] with `seed` itself, then for every n
    of `prefix_sizes` (train.prefix_set_sizes) its first n items [batch, n, 28, 28, 1]
    with the seed folded with n.
    """
    prefixes = [(images[:, :n], tf.random.experimental.stateless_fold_in(seed, n)) for n in prefix_sizes]
    return [(images, seed), *prefixes]


def validation_tasks(config, characters, model) -> dict:
    """The few-shot tasks of train.val_tasks on `characters` (the validation split),
    {"<ways>way_<shots>shot_<rule>": (rule, task)} with the model's first classification rule;
    the same episodes at every validation. Raises ConfigError for a malformed pair, a
    model without a rule, more ways than characters or fewer queries than ways."""
    pairs = [tuple(pair) for pair in config.train.val_tasks]
    if not pairs:
        return {}
    if not model.classification_rules:
        raise errors.ConfigError(f"train.val_tasks {pairs}: {config.model} has no classification rule")
    rule = model.classification_rules[0]
    queries = config.train.val_task_queries
    tasks = {}
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(n, int) for n in pair) or pair[0] < 2 or pair[1] < 1:
            raise errors.ConfigError(f"train.val_tasks: each must be a pair (ways >= 2, shots >= 1), got {pair}")
        ways, shots = pair
        if ways > len(characters):
            raise errors.ConfigError(
                f"train.val_tasks: {ways}-way tasks need {ways} validation characters; there are {len(characters)}"
            )
        if queries < ways:
            raise errors.ConfigError(f"train.val_task_queries {queries} is fewer than the {ways} ways of a task")
        tasks[f"{ways}way_{shots}shot_{rule}"] = (
            rule,
            few_shot.random_episodes(
                characters, ways=ways, shots=shots, num_episodes=queries // ways, seed=config.seed
            ),
        )
    return tasks


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


class RemainingTime:
    """Estimates the time left from the median seconds per step of the last `window` loops.

    A median, not a running mean, so one stretched loop (the first one's tracing, a
    SIGSTOP, a suspended machine) does not skew the estimate for the rest of the run.
    """

    def __init__(self, window: int = 25):
        self._seconds_per_step = collections.deque(maxlen=window)

    def add(self, num_steps: int, seconds: float) -> None:
        self._seconds_per_step.append(seconds / num_steps)

    def seconds(self, remaining_steps: int) -> float:
        """Seconds for `remaining_steps` more steps; inf before any loop was added."""
        if not self._seconds_per_step:
            return math.inf
        return remaining_steps * statistics.median(self._seconds_per_step)


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def training_data(config, characters, start: int = 0) -> tuple:
    """(training characters after augmentation, endless episode dataset from batch `start`).

    Raises ConfigError for turns on a split whose classes already include every
    rotation (vinyals, random: the turns would only repeat them under new names).
    """
    if config.data.augment_turns and config.data.split in omniglot.ROTATED_SPLITS:
        raise errors.ConfigError(
            f"data.augment_turns: the {config.data.split} split's training classes already include every rotation, "
            "so turning them only repeats them; set --config.data.augment_turns=False (flips still add classes)"
        )
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


class Trainer:
    """The training state and the inner loop (orbit's trainer); `train_and_evaluate` drives it.

    Model, optimizer and step counter live under `strategy`'s scope. `train(iterator,
    num_steps)` runs `num_steps` optimizer steps in one tf.function; each step:
      1. every replica computes the loss and gradients of its slice of the global batch
         (`strategy.run`; each set's first items also scored as sets of their own when
         train.prefix_set_sizes is set), scaled by the global batch, with its own
         sampling seed (the step's seed folded with the replica id) and its own
         batch-norm statistics;
      2. the gradients are summed over replicas, and the step is skipped if the loss or
         any gradient is not finite on any replica (weights and optimizer state stay);
      3. otherwise they are clipped (train.grad_clip_norm / grad_clip_value, applied to
         the summed gradients, as on one device) and applied.
    So N replicas compute what one device computes on the same N slices.
    """

    def __init__(self, config, strategy: tf.distribute.Strategy | None = None):
        if config.train.grad_clip_norm and config.train.grad_clip_value:
            raise errors.ConfigError("set at most one of train.grad_clip_norm and train.grad_clip_value")
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if config.data.batch_size % replicas:
            raise errors.ConfigError(
                f"data.batch_size {config.data.batch_size} (the global batch) must be a multiple of the "
                f"{replicas} replicas of the strategy"
            )
        with self.strategy.scope():
            self.model = models.build_model(config.model, **config.model_kwargs.to_dict())
            self.optimizer = make_optimizer(config.train)
            self.optimizer.build(self.model.trainable_variables)
            # Batches consumed; seeds the model's sampling and positions the data stream.
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
            # What validation, evaluation and export use when train.ema_decay is set.
            self.average = (
                weight_average.WeightAverage(self.model, config.train.ema_decay) if config.train.ema_decay else None
            )
        # Saved with every checkpoint so a resumed run only keeps a better one.
        self.best_val_bound = tf.Variable(-math.inf, dtype=tf.float64, trainable=False)
        # Steps in a row skipped for a non-finite loss or gradient (not checkpointed).
        self.bad_streak = tf.Variable(0, dtype=tf.int64, trainable=False)
        set_size = config.data.set_size
        if any(not 1 <= n < set_size for n in config.train.prefix_set_sizes):
            raise errors.ConfigError(
                f"train.prefix_set_sizes {tuple(config.train.prefix_set_sizes)}: each must be in [1, {set_size - 1}] "
                f"(prefixes of the data.set_size={set_size} training sets)"
            )
        period = config.train.likelihood_weight_period
        if period and not self.model.separable_elbo:
            raise errors.ConfigError(
                f"train.likelihood_weight_period needs a model that splits its bound; {config.model} does not"
            )
        self._train_steps = self._make_train_steps()

    def checkpoint(self, with_average: bool = True, layout_of: str | None = None) -> tf.train.Checkpoint:
        """What a checkpoint holds: the model, optimizer, step, best validation bound and
        (when train.ema_decay is set, unless `with_average` is False) the weight average.
        With `layout_of`, a checkpoint prefix, the optimizer is laid out as it is there
        (`optimizer_as_saved`), to restore from it."""
        optimizer = self.optimizer if layout_of is None else optimizer_as_saved(self.optimizer, layout_of)
        others = {"optimizer": optimizer, "step": self.step, "best_val_bound": self.best_val_bound}
        if self.average and with_average:
            others[weight_average.CHECKPOINT_KEY] = self.average.checkpoint()
        return workdir_lib.make_checkpoint(self.model, **others)

    def restore(self, prefixes) -> str | None:
        """Restores the newest readable checkpoint of `prefixes` (oldest first) and the
        weight average saved with it; a checkpoint without one (written before
        train.ema_decay was set) starts the average from its weights. Returns the
        prefix, or None when `prefixes` is empty."""
        prefix = workdir_lib.restore_newest_readable(
            lambda candidate: self.checkpoint(with_average=False, layout_of=candidate), prefixes
        )
        if prefix and self.average and not self.average.restore(prefix):
            logging.info("%s holds no weight average: the average starts from its weights", prefix)
        return prefix

    def iterator(self, characters, start: int):
        """The episode stream from batch `start`, split over replicas and workers.

        Every worker builds the same global batches and keeps its replicas' slices,
        so the global batch is the config's and the stream does not depend on the
        number of workers (a resumed run continues it, whatever the cluster).
        """
        characters, dataset = training_data(self.config, characters, start)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return characters, iter(self.strategy.experimental_distribute_dataset(dataset.with_options(options)))

    def train(self, iterator, num_steps: int) -> tuple:
        """Runs `num_steps` steps: (mean loss in nats/image, mean gradient norm before
        clipping, steps skipped) as floats, the means over the steps taken. The loss is
        the negative bound; the gradient is that of the weighted objective when
        `train.likelihood_weight_period` is set."""
        return tuple(float(x) for x in self._train_steps(iterator, tf.constant(num_steps)))

    def _make_train_steps(self):
        config, strategy, model, optimizer = self.config, self.strategy, self.model, self.optimizer
        prefix_sizes = tuple(config.train.prefix_set_sizes)
        items_per_step = config.data.batch_size * (config.data.set_size + sum(prefix_sizes))
        trainable = model.trainable_variables
        period = config.train.likelihood_weight_period
        clip_norm, clip_value = config.train.grad_clip_norm, config.train.grad_clip_value

        def replica_gradients(images, seed, weight):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
            with tf.GradientTape() as tape:
                loss = objective = 0.0
                for sets, sets_seed in scored_sets(images, seed, prefix_sizes):
                    if period:
                        log_likelihood, kl = model.elbo_terms(sets, sets_seed, training=True)
                        bound, weighted = log_likelihood - kl, weight * log_likelihood - kl / weight
                    else:
                        bound = weighted = model.elbo(sets, sets_seed, training=True)
                    loss -= tf.reduce_sum(bound) / items_per_step
                    objective -= tf.reduce_sum(weighted) / items_per_step
            return loss, tape.gradient(objective, trainable)

        # XLA-compiling the replica's forward and backward pass (not the loop, whose
        # iterator XLA cannot compile) is a config choice: whether it pays depends on
        # the model and the device (README "Speed"). It holds no synchronisation point.
        compiled = tf.function(replica_gradients, jit_compile=config.train.jit_compile)

        def replica_step(images, seed, weight):
            loss, gradients = compiled(images, seed, weight)
            # One batched all-reduce of every gradient (packed by tf.distribute).
            return loss, tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)

        def apply(gradients):
            if clip_norm:
                gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
            if clip_value:
                gradients = [tf.clip_by_value(g, -clip_value, clip_value) for g in gradients]
            optimizer.apply_gradients(zip(gradients, trainable))
            if self.average:
                self.average.update()

        @tf.function
        def train_steps(iterator, num_steps):
            loss_sum, norm_sum, taken_sum = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
            for _ in tf.range(num_steps):
                batch = next(iterator)
                step = self.step.read_value()
                seed = tf.cast(tf.stack([tf.constant(config.seed, tf.int64), step % (2**31 - 1)]), tf.int32)
                weight = likelihood_weight(step, period) if period else tf.constant(1.0)
                losses, gradients = strategy.run(replica_step, args=(batch["images"], seed, weight))
                loss = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
                # Every replica holds the same sum: take this worker's first.
                gradients = [strategy.experimental_local_results(g)[0] for g in gradients]
                norm = tf.linalg.global_norm(gradients)
                # The global norm is finite only if every gradient is.
                finite = tf.math.is_finite(loss) & tf.math.is_finite(norm)
                tf.cond(finite, functools.partial(apply, gradients), lambda: None)
                loss_sum += tf.where(finite, loss, 0.0)
                norm_sum += tf.where(finite, norm, 0.0)
                taken_sum += tf.cast(finite, tf.float32)
                self.bad_streak.assign(tf.where(finite, tf.constant(0, tf.int64), self.bad_streak + 1))
                self.step.assign_add(1)
            taken_steps = tf.maximum(taken_sum, 1.0)
            skipped = tf.cast(num_steps, tf.float32) - taken_sum
            return loss_sum / taken_steps, norm_sum / taken_steps, skipped

        return train_steps


def train_and_evaluate(config, workdir, data_dir, strategy: tf.distribute.Strategy | None = None) -> int:
    """Trains `config.model` in `workdir`, resuming from its latest checkpoint.

    The outer loop (orbit's controller): every inner loop it logs progress and handles
    non-finite steps; every `train.eval_every` steps it validates (the bound, and the
    accuracy of the few-shot tasks of `train.val_tasks`), keeps the checkpoint with the
    best bound and draws a sample grid; every `train.checkpoint_every_secs` it saves.
    The model computes in the current Keras dtype policy, which the entry point sets
    once from `config.precision` (`precision.set_policy`). Under a multi-worker
    strategy every worker runs this function; the chief writes the workdir, the others
    save into scratch folders they delete (oneshot_tf/distribute.py), and all of them
    restore from the chief's checkpoints (so `workdir` must be storage they share).

    Args:
      config: a config from configs/<model>.py.
      workdir: output folder (see oneshot_tf/workdir.py).
      data_dir: folder with an Omniglot source.
      strategy: a tf.distribute strategy; default: the current one.

    Only one run trains in a workdir at a time (its chief holds workdir.training_lock).

    Returns:
      The step reached.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    workdir = pathlib.Path(workdir)
    if chief:
        workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lib.training_lock(workdir) if chief else contextlib.nullcontext():
        return _train_and_evaluate(config, workdir, data_dir, strategy, chief)


def _train_and_evaluate(config, workdir: pathlib.Path, data_dir, strategy, chief: bool) -> int:
    if chief:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        logging.info("Training %s in %s with oneshot_tf at commit %s", config.model, workdir, provenance.code_commit())
    keras.utils.set_random_seed(config.seed)
    splits = omniglot.load_configured_splits(config.data, data_dir, config.seed)
    total_steps = config.train.steps

    trainer = Trainer(config, strategy)
    model, optimizer, step = trainer.model, trainer.optimizer, trainer.step
    val_tasks = validation_tasks(config, splits["val"], model)
    checkpoint = trainer.checkpoint()

    def manager_in(name, max_to_keep):
        return tf.train.CheckpointManager(
            checkpoint, distribute.write_dir(strategy, workdir / name), max_to_keep=max_to_keep, step_counter=step
        )

    manager = manager_in(workdir_lib.CHECKPOINTS, config.train.max_checkpoints)
    best_manager = manager_in(workdir_lib.BEST_CHECKPOINT, 1)
    # Every worker restores what the chief saved.
    chief_checkpoints = workdir_lib.checkpoint_prefixes(workdir / workdir_lib.CHECKPOINTS)
    restored = trainer.restore(chief_checkpoints)
    start = int(step.numpy())
    if restored:
        logging.info("Resumed from %s at step %d", restored, start)
        _use_configured_learning_rate(optimizer, config.train)
    elif config.train.init_from:
        folder = warm_start.initialise(model, config.train.init_from, config.model_kwargs.to_dict())
        if chief:
            steps_before = warm_start.trained_steps(folder)
            workdir_lib.write_json(workdir / workdir_lib.WARM_START, {"init_from": str(folder), "steps": steps_before})
            if steps_before is None:
                logging.warning(
                    "The steps %s was trained for are unknown (no assets.extra/training.json in it, an export "
                    "older than that record, and no eval.json beside its version folders): eval.json "
                    'will count this run\'s steps alone unless %s gets them ("steps"); warm-start from a shipped '
                    "model's whole folder to keep them",
                    folder,
                    workdir / workdir_lib.WARM_START,
                )
        if trainer.average:
            trainer.average.restart()
        logging.info("Starting from the weights of %s (train.init_from)", folder)
    if start >= total_steps:
        logging.info("Already trained: step %d >= train.steps %d", start, total_steps)
        return start

    train_characters, iterator = trainer.iterator(splits["train"], start)
    items_per_step = config.data.batch_size * config.data.set_size

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
    writer = (
        tf.summary.create_file_writer(str(workdir / "tensorboard" / "train"))
        if chief
        else tf.summary.create_noop_writer()
    )
    logging.info(
        "Training %s on %d characters from step %d to %d: batch %d episodes x %d items, %d parameters, %s",
        config.model,
        len(train_characters),
        start,
        total_steps,
        config.data.batch_size,
        config.data.set_size,
        sum(math.prod(v.shape) for v in model.trainable_variables),
        distribute.describe(strategy),
    )
    logging.info(
        "Tracing and compiling the training step (the first %d steps include it; it can take minutes)",
        min(config.train.steps_per_loop, total_steps - start),
    )
    current, last_save, run_start = start, time.time(), time.time()
    remaining_time = RemainingTime()  # Steady-state loops only: the first one includes tracing.
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
            loss, grad_norm, skipped = trainer.train(iterator, num_steps)
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
            bad_streak = int(trainer.bad_streak.numpy())
            if bad_streak >= config.train.max_bad_steps:
                latest = workdir_lib.newest_checkpoint(workdir / workdir_lib.CHECKPOINTS)
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
                trainer.restore([latest])
                recovered_from, current = latest, int(step.numpy())
                trainer.bad_streak.assign(0)
                _, iterator = trainer.iterator(splits["train"], current)
                continue
            now = time.time()
            steps_per_sec = num_steps / (now - loop_start)
            if previous == start:
                logging.info("First %d steps (with tracing) took %s", num_steps, _format_seconds(now - loop_start))
            else:
                remaining_time.add(num_steps, now - loop_start)
            logging.info(
                "step %d/%d  loss %s nats/image  grad norm %s  %.1f steps/s  %.0f images/s  ETA %s",
                current,
                total_steps,
                f"{loss:.3f}" if skipped < num_steps else "n/a",
                f"{grad_norm:.3g}" if skipped < num_steps else "n/a",
                steps_per_sec,
                steps_per_sec * items_per_step,
                _format_seconds(remaining_time.seconds(total_steps - current)),
            )
            if skipped < num_steps:  # Means over the steps taken; none were taken otherwise.
                tf.summary.scalar("train/loss", loss, step=current)
                tf.summary.scalar("train/grad_norm", grad_norm, step=current)
            tf.summary.scalar("train/steps_per_sec", steps_per_sec, step=current)
            tf.summary.scalar("train/learning_rate", float(optimizer.learning_rate.numpy()), step=current)
            every = config.train.eval_every
            if every and (current // every > previous // every or current == total_steps):
                with trainer.average.applied() if trainer.average else contextlib.nullcontext():
                    val_bound = evaluate.mean_bound(model, val["images"], seed=config.seed)
                    samples = config.eval.classification_num_samples
                    accuracies = {
                        name: 1.0 - classify.error_rate(model, task, rule, num_samples=samples, seed=config.seed)
                        for name, (rule, task) in val_tasks.items()
                    }
                    grid = evaluate.sample_grid(model, grid_support, config.sample, current)
                improved = val_bound > float(trainer.best_val_bound.numpy())
                if trainer.average:
                    trained_bound = evaluate.mean_bound(model, val["images"], seed=config.seed)
                    tf.summary.scalar("val/bound_trained_weights", trained_bound, step=current)
                logging.info(
                    "step %d  validation bound %.3f nats/image%s%s%s",
                    current,
                    val_bound,
                    f" (weight average; trained weights {trained_bound:.3f})" if trainer.average else "",
                    "  (best so far: saved)" if improved else f"  (best {float(trainer.best_val_bound.numpy()):.3f})",
                    "".join(f"  {name} accuracy {value:.3f}" for name, value in accuracies.items()),
                )
                tf.summary.scalar("val/bound", val_bound, step=current)
                for name, value in accuracies.items():
                    tf.summary.scalar(f"val/{name}_accuracy", value, step=current)
                if improved:
                    trainer.best_val_bound.assign(val_bound)
                    save(best_manager)
                tf.summary.image("samples", grid[None, ..., None], step=current)
            if now - last_save > config.train.checkpoint_every_secs:
                save(manager)
                last_save = now
        save(manager)
        writer.flush()
    for name in (workdir_lib.CHECKPOINTS, workdir_lib.BEST_CHECKPOINT):
        distribute.remove_scratch(strategy, workdir / name)
    if stop["signum"] is not None and current < total_steps:
        raise Interrupted(current, stop["signum"])
    logging.info(
        "Trained to step %d in %s%s; weights digest %s",
        current,
        _format_seconds(time.time() - run_start),
        f" ({skipped_total} non-finite steps skipped)" if skipped_total else "",
        distribute.weights_digest(model.trainable_variables),
    )
    return current
