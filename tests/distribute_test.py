"""Training under tf.distribute: MirroredStrategy over the two logical CPUs that
conftest.py makes, MultiWorkerMirroredStrategy over two local processes, and the
errors for bad cluster specs."""

import functools
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from oneshot_tf import distribute, errors, train, weight_average
from oneshot_tf import workdir as workdir_lib
from tests import helpers

# The mirrored step runs as a graph (grappler and oneDNN fuse and reorder float32
# sums), the hand-made one eagerly: the tolerance of the comparisons below.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
# A bias feeding batch norm has a zero gradient up to float noise, which Adam's
# g / (sqrt(v) + eps) turns into steps of up to the learning rate in either
# direction: such weights (gradient norm below this fraction of the global norm at
# every step) are left out of the weight comparison.
NOISE_GRADIENT = 1e-6


@functools.cache
def _mirrored() -> tf.distribute.MirroredStrategy:
    """`--strategy=mirrored` here: one per process (as in a real run)."""
    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, "conftest.py should have made 2 logical CPUs"
    return strategy


def _moving_statistics(model) -> list:
    return [v for v in model.variables if not v.trainable]


class MirroredTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("statistician", "gmn")
    def test_two_replicas_compute_what_one_device_computes_on_their_slices(self, name):
        """Each replica takes half the global batch, its own seed (the step's folded with
        the replica id) and its own batch-norm statistics; the summed gradient is applied
        once. One device doing the same by hand must give the same losses, gradient
        norms, weights and (averaged) moving statistics."""
        config = helpers.tiny_config(name)
        config.data.batch_size = 4
        # The plain bound (the statistician's config weights it), clipped by global norm:
        # clipping applies to the summed gradient.
        config.train.likelihood_weight_period = 0
        config.train.grad_clip_value = 0.0
        config.train.grad_clip_norm = 50.0
        if name == "statistician":
            # Slow moving averages: the noise-driven biases above (which feed batch
            # norms) barely reach the statistics compared below.
            config.model_kwargs.batch_norm_momentum = 0.99
        steps = 3
        batches = [helpers.random_images([4, config.data.set_size, 28, 28, 1], seed=s) for s in range(steps)]
        mirrored = train.Trainer(config, _mirrored())
        reference = train.Trainer(config)
        for mine, theirs in zip(reference.model.variables, mirrored.model.variables):
            mine.assign(theirs.numpy())
        dataset = tf.data.Dataset.from_tensor_slices({"images": tf.stack(batches)})
        iterator = iter(mirrored.strategy.experimental_distribute_dataset(dataset))

        model, items = reference.model, config.data.batch_size * config.data.set_size
        trainable, moving = model.trainable_variables, _moving_statistics(model)
        meaningful = [False] * len(trainable)
        for step, batch in enumerate(batches):
            loss, norm, skipped = mirrored.train(iterator, 1)
            self.assertEqual(skipped, 0.0)
            seed = tf.constant([config.seed, step])
            start = [v.numpy() for v in moving]
            expected_loss, gradients, replica_statistics = 0.0, None, []
            for replica, half in enumerate(tf.split(batch, 2)):
                for v, value in zip(moving, start):
                    v.assign(value)
                with tf.GradientTape() as tape:
                    replica_seed = tf.random.experimental.stateless_fold_in(seed, replica)
                    replica_loss = -tf.reduce_sum(model.elbo(half, replica_seed, training=True)) / items
                grads = tape.gradient(replica_loss, trainable)
                gradients = grads if gradients is None else [a + b for a, b in zip(gradients, grads)]
                expected_loss += float(replica_loss)
                replica_statistics.append([v.numpy() for v in moving])
            for v, *values in zip(moving, *replica_statistics):
                v.assign(np.mean(values, axis=0))
            self.assertAllClose(loss, expected_loss, **TOLERANCE)
            global_norm = tf.linalg.global_norm(gradients)
            self.assertAllClose(norm, global_norm, **TOLERANCE)
            meaningful = [
                m or float(tf.norm(g)) > NOISE_GRADIENT * float(global_norm) for m, g in zip(meaningful, gradients)
            ]
            clipped, _ = tf.clip_by_global_norm(gradients, config.train.grad_clip_norm)
            reference.optimizer.apply_gradients(zip(clipped, trainable))
        compared = [v for v, m in zip(zip(trainable, mirrored.model.trainable_variables), meaningful) if m]
        self.assertGreater(len(compared), 0.8 * len(trainable))
        for mine, theirs in compared + list(zip(moving, _moving_statistics(mirrored.model))):
            self.assertAllClose(mine, theirs.numpy(), **TOLERANCE, msg=mine.path)
        self.assertEqual(bool(moving), name == "statistician")  # The GMN has no batch norm.
        for statistic in moving[:1]:
            self.assertNotAllClose(statistic, np.zeros_like(statistic))  # The statistics did move.

    def test_replicas_keep_their_own_batch_norm_statistics_and_checkpoints_hold_the_mean(self):
        strategy = _mirrored()
        config = helpers.tiny_config("statistician")
        config.data.batch_size = 4
        trainer = train.Trainer(config, strategy)
        # Two different halves: the replicas' statistics differ.
        batch = tf.concat([tf.zeros([2, config.data.set_size, 28, 28, 1]), helpers.random_images([2, 5, 28, 28, 1])], 0)
        iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors({"images": batch})))
        trainer.train(iterator, 1)
        moving = next(v for v in trainer.model.variables if not v.trainable).value
        per_replica = [x.numpy() for x in strategy.experimental_local_results(moving)]
        self.assertNotAllClose(per_replica[0], per_replica[1])
        path = tf.train.Checkpoint(v=moving).save(os.path.join(self.get_temp_dir(), "ckpt"))
        self.assertAllClose(tf.train.load_variable(path, "v/.ATTRIBUTES/VARIABLE_VALUE"), np.mean(per_replica, 0))

    def test_the_weight_average_is_the_same_on_both_replicas(self):
        strategy = _mirrored()
        config = helpers.tiny_config("statistician")
        config.data.batch_size = 4
        config.train.ema_decay = 0.5
        trainer = train.Trainer(config, strategy)
        variables = weight_average.averaged_variables(trainer.model)
        before = [v.numpy() for v in variables]  # Batch-norm statistics read as the replicas' mean.
        batch = helpers.random_images([4, config.data.set_size, 28, 28, 1])
        iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors({"images": batch})))
        trainer.train(iterator, 1)
        after = [v.numpy() for v in variables]
        # The first update's decay is min(0.5, 1 / 10).
        for average, old, new in zip(trainer.average.averages, before, after):
            for value in strategy.experimental_local_results(average):
                self.assertAllClose(value, 0.1 * old + 0.9 * new, **TOLERANCE)
        with trainer.average.applied():
            for v, average in zip(variables, trainer.average.averages):
                self.assertAllClose(v.numpy(), average.numpy(), **TOLERANCE)
        for v, value in zip(variables, after):
            self.assertAllClose(v.numpy(), value, **TOLERANCE)

    def test_the_global_batch_must_split_evenly(self):
        config = helpers.tiny_config("vae")
        config.data.batch_size = 3
        with self.assertRaisesRegex(errors.ConfigError, "batch_size 3 .* multiple of the 2 replicas"):
            train.Trainer(config, _mirrored())

    def test_a_run_resumes_under_another_strategy(self):
        """One device to two replicas and back: same checkpoints, same data stream."""
        config = helpers.tiny_config("vae")
        config.train.steps = 2
        workdir = pathlib.Path(self.create_tempdir())
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        config.train.steps = 4
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR, _mirrored()), 4)
        restored = workdir_lib.restore_model(config, workdir, "latest")
        self.assertEqual(restored.step, 4)
        config.train.steps = 5
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 5)


def _free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_for(process, pattern: str, seconds: float, lines: list) -> bool:
    """Reads process output into `lines` until a line matches `pattern` (True), the
    process ends, or `seconds` pass (False)."""
    os.set_blocking(process.stdout.fileno(), False)
    deadline = time.time() + seconds
    while time.time() < deadline:
        line = process.stdout.readline()
        if line:
            lines.append(line)
            if re.search(pattern, line):
                return True
        elif process.poll() is not None:
            return False
        else:
            time.sleep(0.2)
    return False


class MultiWorkerTest(tf.test.TestCase):
    def _start_workers(self, workdir, steps: int, model: str = "vae") -> list:
        addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        processes = []
        for index in range(2):
            tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            processes.append(
                helpers.run_main(
                    f"--model={model}",
                    f"--config=configs/{model}.py:tiny",
                    "--config.data.source=gmn28",
                    f"--config.train.steps={steps}",
                    "--config.train.checkpoint_every_secs=0",
                    "--strategy=multi_worker",
                    "--cluster_timeout_secs=120",
                    "--mode=train",
                    f"--workdir={workdir}",
                    env={"TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""},
                )
            )
        for process in processes:
            self.addCleanup(lambda p=process: p.poll() is None and p.kill())
        return processes

    def test_two_workers_train_in_step_and_the_chief_checkpoint_resumes_in_one_process(self):
        # The statistician: batch norm's per-replica statistics are read (all-reduced)
        # by validation, sample grids and checkpoint saves on every worker.
        workdir = pathlib.Path(self.create_tempdir())
        processes = self._start_workers(workdir, steps=4, model="statistician")
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        for process, output in zip(processes, outputs):
            self.assertEqual(process.returncode, 0, output[-3000:])
        digests = [re.search(r"weights digest (\w+)", output).group(1) for output in outputs]
        self.assertEqual(digests[0], digests[1])
        self.assertIn("this process worker:0 (chief)", outputs[0])
        # Only the chief wrote the workdir; the other worker's scratch folders are gone.
        self.assertEqual(sorted(p.name for p in workdir.parent.glob(f".{workdir.name}*")), [])
        self.assertFalse(list(workdir.parent.glob(".checkpoints*")))
        config = helpers.tiny_config("statistician")
        # The workers' digest is of the trained weights; the config's weight average is
        # what restore_model would load otherwise.
        config.train.ema_decay = 0.0
        restored = workdir_lib.restore_model(config, workdir, "latest")
        self.assertEqual(restored.step, 4)
        self.assertEqual(distribute.weights_digest(restored.model.trainable_variables), digests[0])
        config = helpers.tiny_config("statistician")
        self.assertEqual(workdir_lib.restore_model(config, workdir, "latest").weights, "average")
        config.train.steps = 6
        self.assertEqual(train.train_and_evaluate(config, workdir, helpers.DATA_DIR), 6)

    def test_a_killed_worker_makes_the_other_exit_with_a_clear_error(self):
        workdir = pathlib.Path(self.create_tempdir())
        chief, other = self._start_workers(workdir, steps=1_000_000)
        lines = []
        self.assertTrue(_wait_for(chief, r"step \d+/1000000", 240, lines), "".join(lines)[-3000:])
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=30)
        try:
            output = "".join(lines) + chief.communicate(timeout=180)[0]
        except subprocess.TimeoutExpired:
            chief.kill()
            self.fail("the chief did not notice the lost worker within 180 s")
        self.assertNotEqual(chief.returncode, 0)
        self.assertRegex(output, r"error: lost a worker of the cluster .*start every worker again to resume")
        self.assertNotIn("Traceback", output)


class BadSpecsTest(tf.test.TestCase):
    def test_tf_config_checks(self):
        good = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
        self.assertEqual(distribute.parse_tf_config(json.dumps(good)), good)
        cases = [
            ("", "needs TF_CONFIG"),
            ("{cluster: 1}", "not valid JSON"),
            ("[1]", "must be a JSON object"),
            ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
            ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', 'takes "chief" and "worker"'),
            ('{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}', 'list of "host:port"'),
            ('{"cluster": {"worker": ["a:1"]}}', 'no "task"'),
            ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not in the cluster"),
        ]
        for text, message in cases:
            with self.assertRaisesRegex(errors.ConfigError, re.escape(message)):
                distribute.parse_tf_config(text)
        with self.assertRaisesRegex(errors.ConfigError, "unknown strategy 'horovod'; valid: default, mirrored"):
            distribute.make_strategy("horovod")
        with self.assertRaisesRegex(errors.ConfigError, "needs --tpu"):
            distribute.make_strategy("tpu")

    def test_the_command_line_says_what_is_wrong_in_one_line(self):
        cases = [
            (["--strategy=horovod"], {}, "error: unknown strategy 'horovod'"),
            (["--strategy=multi_worker"], {"TF_CONFIG": "{worker: 1"}, "error: TF_CONFIG is not valid JSON"),
        ]
        processes = [
            (helpers.run_main("--model=vae", "--config=configs/vae.py:tiny", *args, env=env), expected)
            for args, env, expected in cases
        ]
        for process, expected in processes:
            output = process.communicate(timeout=240)[0]
            self.assertEqual(process.returncode, 1, output)
            self.assertIn(expected, output.strip().splitlines()[-1])
            self.assertNotIn("Traceback", output)


if __name__ == "__main__":
    absltest.main()
