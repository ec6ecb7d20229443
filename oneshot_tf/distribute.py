"""tf.distribute strategies by name, and who writes what under them.

  default       one device (TF's default strategy)
  mirrored      every local GPU (or, without GPUs, every logical CPU device), one process
  multi_worker  MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG, one process per worker
  tpu           TPUStrategy on the Cloud TPU named by --tpu

Every worker runs the same program; the chief (worker 0, or the `chief` task) writes
summaries, checkpoints, eval.json, samples and exports. Other workers still take part
in every collective, checkpoint saves included (reading a variable that is synchronised
on read all-reduces it), but save into a scratch folder of their own that they delete.
"""

import hashlib
import json
import os
import pathlib
import shutil

import tensorflow as tf

from oneshot_tf import errors

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def parse_tf_config(text: str) -> dict:
    """Checks $TF_CONFIG for a multi-worker run; returns it parsed.

    Raises:
      errors.ConfigError: naming what is wrong (not JSON, no cluster, a task outside it).
    """
    if not text:
        raise errors.ConfigError(
            "--strategy=multi_worker needs TF_CONFIG, e.g. "
            '\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}\''
        )
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise errors.ConfigError(f"TF_CONFIG is not valid JSON ({e}): {text[:200]!r}") from e
    if not isinstance(tf_config, dict):
        raise errors.ConfigError(f"TF_CONFIG must be a JSON object, got {type(tf_config).__name__}")
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise errors.ConfigError('TF_CONFIG has no "cluster" object of job name -> list of "host:port"')
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            raise errors.ConfigError(f'TF_CONFIG cluster job {job!r}: multi_worker takes "chief" and "worker" jobs')
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise errors.ConfigError(f'TF_CONFIG cluster job {job!r} must be a list of "host:port", got {addresses!r}')
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise errors.ConfigError('TF_CONFIG has no "task": {"type": ..., "index": ...} naming this process')
    task_type, index = task["type"], task["index"]
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise errors.ConfigError(f"TF_CONFIG task {task_type}:{index} is not in the cluster {cluster}")
    return tf_config


def make_strategy(name: str, *, tpu: str = "", cluster_timeout_secs: float = 600.0) -> tf.distribute.Strategy:
    """The strategy called `name` (one of STRATEGIES).

    Call it before any other TF op: multi_worker and tpu set up the runtime.
    `cluster_timeout_secs` bounds the wait for every worker to join and each
    collective (a worker that dies makes the others fail instead of hang).

    Raises:
      errors.ConfigError: unknown name, bad TF_CONFIG, or no TPU address.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if gpus:
            return tf.distribute.MirroredStrategy(gpus)
        # Logical CPU devices share one memory: sums on one device beat collectives.
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi_worker":
        parse_tf_config(os.environ.get("TF_CONFIG", ""))
        _bound_cluster_waits(cluster_timeout_secs)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cluster_timeout_secs)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as e:
            if "Timeout waiting for the cluster" not in str(e):
                raise
            raise errors.ClusterError(
                f"not every worker of TF_CONFIG joined within {cluster_timeout_secs:g} s ({e}); "
                "start one process per worker, each with its own task index"
            ) from e
    if name == "tpu":
        if not tpu:
            raise errors.ConfigError("--strategy=tpu needs --tpu=NAME (a Cloud TPU name, grpc://address, or 'local')")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise errors.ConfigError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")


def _bound_cluster_waits(seconds: float):
    # MultiWorkerMirroredStrategy waits for the cluster without a limit by default and
    # checks its peers every 30 s; these class attributes (what TF's own multi-worker
    # tests set) bound the first wait and notice a dead worker sooner.
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective

    collective.CollectiveAllReduceExtended._check_health_initial_timeout = seconds
    collective.CollectiveAllReduceExtended._check_health_interval = 5


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes outputs (always, outside multi-worker runs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def write_dir(strategy: tf.distribute.Strategy, directory) -> pathlib.Path:
    """`directory` for the chief; a scratch folder beside it for any other worker."""
    directory = pathlib.Path(directory)
    if is_chief(strategy):
        return directory
    resolver = strategy.cluster_resolver
    return directory.parent / f".{directory.name}.{resolver.task_type}{resolver.task_id}"


def remove_scratch(strategy: tf.distribute.Strategy, directory):
    """Deletes what `write_dir` gave a non-chief worker for `directory`."""
    if not is_chief(strategy):
        shutil.rmtree(write_dir(strategy, directory), ignore_errors=True)


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line: the strategy, its replicas, and this process's role."""
    text = f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.cluster_spec().as_dict():
        text += f", this process {resolver.task_type}:{resolver.task_id}" + (" (chief)" if is_chief(strategy) else "")
    return text


def weights_digest(variables) -> str:
    """A short hash of the variables' values: equal on every worker of a healthy run."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]
