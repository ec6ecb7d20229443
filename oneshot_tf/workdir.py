"""What a workdir holds: its layout, checkpoints, and restoring a model from them.

Layout:
  checkpoints/ckpt-<step>.*   tf.train.Checkpoint(model, optimizer, step, best validation bound,
                              weight average when train.ema_decay is set)
  best_checkpoint/ckpt-<step>.*  the checkpoint with the best validation bound so far
  tensorboard/{train,eval}/   TensorBoard events
  eval.json                   the per-shot table (SPEC §3); eval_c<N>.json for C_test = N > 1
  samples/                    sample grid PNGs
  export/<model>/<version>/   SavedModels (SPEC §5)
  config.json                 the config of the latest run
  warm_start.json             what a run of train.init_from started from: the export read
                              and the steps that model had been trained for (null: unknown)
  .training.lock              held by the run training here (training_lock); names its process
"""

import collections
import contextlib
import json
import os
import pathlib
import socket

import tensorflow as tf
from absl import logging

from oneshot_tf import errors, models, pretrained, weight_average

CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = "best_checkpoint"
EXPORT = "export"
WARM_START = "warm_start.json"
TRAINING_LOCK = ".training.lock"
CHECKPOINT_CHOICES = ("best", "latest")

# What restore_model returns; `checkpoint` is the kind restored, "best" or "latest";
# `weights` "average" (the weight average, train.ema_decay) or "trained".
Restored = collections.namedtuple("Restored", ["model", "step", "checkpoint", "weights"])


def newest_export(workdir, model: str) -> pathlib.Path:
    """<workdir>/export/<model>/<newest complete version>/; ExportNotFoundError if none."""
    folder = pathlib.Path(workdir) / EXPORT / model
    newest = pretrained.newest_version(folder)
    if newest is None:
        raise errors.ExportNotFoundError(f"no export in {folder}: run --mode=export")
    return newest


@contextlib.contextmanager
def training_lock(workdir: pathlib.Path):
    """Holds `workdir`/.training.lock exclusively while a run trains in `workdir`.

    A second training run on the same workdir (say, one started again while the first
    still shuts down after a signal) raises WorkdirBusyError, naming the first's process,
    instead of interleaving its checkpoints with the first's. The lock is the operating
    system's (flock), so it ends with its process however that ends; where there is no
    flock (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(workdir / TRAINING_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise errors.WorkdirBusyError(
                f"{holder} is training in {workdir}: wait for it to exit (a run stopped by a signal saves a "
                "checkpoint first) and run again to resume, or give another --workdir"
            ) from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_checkpoint(model, **others) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint of the model's variables (and `others`, e.g. optimizer, step).

    Keras 3 models are not trackable children of a tf.train.Checkpoint (their
    variables would silently be left out), so the underlying tf.Variables are listed
    in the model's own deterministic order.
    """
    return tf.train.Checkpoint(model_variables=[v.value for v in model.variables], **others)


def checkpoint_prefixes(directory: pathlib.Path) -> list:
    """The checkpoints a directory's `checkpoint` file lists, oldest first (files may be gone)."""
    state = tf.train.get_checkpoint_state(str(directory))
    return list(state.all_model_checkpoint_paths) if state else []


def newest_checkpoint(directory: pathlib.Path) -> str | None:
    """The newest checkpoint a directory's `checkpoint` file lists, or None."""
    prefixes = checkpoint_prefixes(directory)
    return prefixes[-1] if prefixes else None


def find_checkpoint(workdir, which: str = "latest") -> tuple:
    """The checkpoint prefix to restore and which kind it is.

    Args:
      workdir: a training workdir.
      which: "latest", or "best" (best validation bound; the latest checkpoint,
        with a warning, when the run has not validated yet).

    Returns:
      (prefix, kind) with kind "best" or "latest". Raises FileNotFoundError naming
      the workdir if it has no checkpoint, ValueError for an unknown `which`.
    """
    if which not in CHECKPOINT_CHOICES:
        raise errors.ConfigError(f"unknown checkpoint {which!r}; valid: {', '.join(CHECKPOINT_CHOICES)}")
    workdir = pathlib.Path(workdir)
    if which == "best":
        best = newest_checkpoint(workdir / BEST_CHECKPOINT)
        if best is not None:
            return best, "best"
        logging.warning("no validated checkpoint in %s; using the latest checkpoint", workdir / BEST_CHECKPOINT)
    latest = newest_checkpoint(workdir / CHECKPOINTS)
    if latest is None:
        raise errors.CheckpointError(f"no checkpoint in {workdir / CHECKPOINTS}: run --mode=train first")
    return latest, "latest"


def restore_newest_readable(checkpoint_for, prefixes) -> str | None:
    """Restores the newest readable checkpoint of `prefixes` (oldest first, as
    CheckpointManager.checkpoints lists them) into `checkpoint_for(prefix)`, a
    tf.train.Checkpoint; returns its prefix, or None when `prefixes` is empty.

    An unreadable checkpoint (truncated, a file missing, not matching the model) is
    skipped with a warning naming it; if none is readable, CheckpointError names them.
    """
    prefixes = list(prefixes)
    failures = []
    for prefix in reversed(prefixes):
        try:
            checkpoint_for(prefix).restore(prefix).expect_partial().assert_existing_objects_matched()
        except (
            tf.errors.OpError,
            OSError,
            ValueError,
            AssertionError,
            IndexError,
        ) as e:  # What TF raises for cut files.
            reason = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
            logging.warning("Checkpoint %s is unreadable (%s); trying the one before it", prefix, reason)
            failures.append(f"{prefix}: {reason}")
            continue
        return prefix
    if failures:
        raise errors.CheckpointError("no readable checkpoint: " + "; ".join(failures))
    return None


def restore_model(config, workdir, which: str | None = None) -> Restored:
    """Builds the model (in the current Keras dtype policy) and restores a checkpoint of
    `workdir` (see find_checkpoint): its weight average when config.train.ema_decay is
    set and the checkpoint has one (a warning says when it has not), else the trained
    weights.

    Args:
      which: "best" or "latest"; default config.eval.checkpoint.

    Returns:
      Restored(model, step, checkpoint kind, weights). Raises CheckpointError naming
      the workdir if it has no checkpoint, or the files if none is readable.
    """
    prefix, kind = find_checkpoint(workdir, which or config.eval.checkpoint)
    model = models.build_model(config.model, **config.model_kwargs.to_dict())
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = make_checkpoint(model, step=step)
    # Partial: the optimizer's slots are not needed; every model variable must be there.
    # An unreadable checkpoint falls back to an older one of the same kind, then to the latest.
    chosen = prefix
    candidates = checkpoint_prefixes(pathlib.Path(prefix).parent) or [prefix]
    if kind == "best":
        candidates = checkpoint_prefixes(pathlib.Path(workdir) / CHECKPOINTS) + candidates
    prefix = restore_newest_readable(lambda _: checkpoint, candidates)
    if kind == "best" and prefix != chosen:
        kind = "latest"
    weights = "trained"
    if config.train.ema_decay:
        averaged = [v.value for v in weight_average.averaged_variables(model)]
        if weight_average.read_averages(prefix, averaged):
            weights = "average"
        else:
            logging.warning("%s holds no weight average (train.ema_decay is set): using its trained weights", prefix)
    logging.info("Restored %s (%s checkpoint, step %d, %s weights)", prefix, kind, int(step.numpy()), weights)
    return Restored(model, int(step.numpy()), kind, weights)


def steps_before(workdir) -> int:
    """Steps of training before this run's step 0: those of the model a train.init_from
    run started from (warm_start.json), 0 for a run from scratch or when unknown."""
    path = pathlib.Path(workdir) / WARM_START
    if not path.exists():
        return 0
    return json.loads(path.read_text()).get("steps") or 0


def restored_record(restored: Restored, workdir) -> dict:
    """What eval.json and an export record of the weights `restored` from `workdir`:
    the checkpoint kind and step, the steps trained in all (steps_before counted) and
    which weights (average or trained)."""
    return {
        "checkpoint": restored.checkpoint,
        "checkpoint_step": restored.step,
        "trained_steps": restored.step + steps_before(workdir),
        "weights": restored.weights,
    }


def write_json(path, payload: dict):
    """Writes JSON atomically (a reader never sees half a file)."""
    path = pathlib.Path(path)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)
