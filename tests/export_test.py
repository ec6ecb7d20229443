"""SavedModel export: fresh-process and TF1 (saved_model_cli) loading, input checks."""

import json
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized
from tensorflow.core.protobuf import saved_model_pb2

from oneshot_tf import errors, evaluate, export, models, precision, train
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, omniglot
from tests import helpers

_FRESH_PROCESS = r"""
import sys
import numpy as np
import tensorflow as tf
inputs = np.load(sys.argv[2])
loaded = tf.saved_model.load(sys.argv[1])
sample = loaded.signatures["sample"](support=tf.constant(inputs["support"]), seed=tf.constant(inputs["seed"]))
log_prob = loaded.signatures["log_prob"](
    support=tf.constant(inputs["support"]), query=tf.constant(inputs["query"]),
    num_samples=tf.constant(inputs["num_samples"]), seed=tf.constant(inputs["seed"]))

@tf.function
def wrapped(support, seed):  # The model inside another tf.function, as other TF code would use it.
    return loaded.signatures["sample"](support=support, seed=seed)["probs"] * 2.0

doubled = wrapped(tf.constant(inputs["support"]), tf.constant(inputs["seed"]))
np.savez(sys.argv[3], probs=sample["probs"].numpy(), images=sample["images"].numpy(),
         log_prob=log_prob["log_prob"].numpy(), doubled=doubled.numpy())
leaked = [m for m in sys.modules if m.startswith(("oneshot_tf", "tensorflow_probability"))]
print("LEAKED", leaked)
"""


class ExportTest(tf.test.TestCase):
    PRECISION = "float32"
    # Same seed, same model: the signature and model.log_prob agree to this relative tolerance.
    EXACT_RTOL = 1e-6

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.config = helpers.tiny_config("iwae")
        cls.config.train.steps = 20
        cls.config.precision = cls.PRECISION
        cls.enterClassContext(precision.policy_scope(cls.PRECISION))
        cls.root = pathlib.Path(tf.compat.v1.test.get_temp_dir()) / f"export_test_{cls.PRECISION}"
        shutil.rmtree(cls.root, ignore_errors=True)
        train.train_and_evaluate(cls.config, cls.root, helpers.DATA_DIR)
        cls.path = export.export(cls.config, cls.root)
        cls.model = workdir_lib.restore_model(cls.config, cls.root).model
        cls.servable = export.Servable(cls.model)
        splits = omniglot.load_configured_splits(cls.config.data, helpers.DATA_DIR, cls.config.seed)
        cls.episodes = episodes.fixed_episodes(splits["test"], num_episodes=6, set_size=4, seed=0)["images"]
        cls.inputs = {
            "support": cls.episodes[:, :3],
            "query": cls.episodes[:, 3],
            "seed": np.array([4, 2], np.int32),
            "num_samples": np.array(50, np.int32),
        }
        cls.loaded = tf.saved_model.load(str(cls.path))

    def _in_process(self):
        sample = self.servable.sample(tf.constant(self.inputs["support"]), tf.constant(self.inputs["seed"]))
        log_prob = self.servable.log_prob(
            *[tf.constant(self.inputs[k]) for k in ("support", "query", "num_samples", "seed")]
        )
        return {
            "probs": sample["probs"].numpy(),
            "images": sample["images"].numpy(),
            "log_prob": log_prob["log_prob"].numpy(),
        }

    def test_layout(self):
        self.assertEqual(self.path, self.root / "export" / "iwae" / "1")
        self.assertEqual(workdir_lib.newest_export(self.root, "iwae"), self.path)
        self.assertTrue((self.path / "saved_model.pb").exists())
        self.assertTrue((self.path / "variables" / "variables.index").exists())
        self.assertCountEqual(self.loaded.signatures.keys(), ["sample", "serving_default", "log_prob"])

    def test_the_version_folder_records_its_training(self):
        record = json.loads((self.path / export.TRAINING_RECORD).read_text())
        self.assertEqual(record["model"], "iwae")
        self.assertEqual(record["model_kwargs"], json.loads(json.dumps(self.config.model_kwargs.to_dict())))
        self.assertEqual((record["checkpoint_step"], record["trained_steps"]), (20, 20))
        self.assertEqual(record["weights_dtype"], "float32")
        self.assertIn("code_commit", record)

    def test_half_precision_weights_halve_the_variables_and_barely_change_the_outputs(self):
        half = export.export_model(self.model, self.create_tempdir().full_path, "iwae", "float16")
        size = lambda path: sum(f.stat().st_size for f in (path / "variables").iterdir())  # noqa: E731
        self.assertLess(size(half), 0.55 * size(self.path))
        dtypes = tf.train.load_checkpoint(str(half / "variables" / "variables")).get_variable_to_dtype_map()
        self.assertEqual({d for d in dtypes.values() if d.is_floating}, {tf.float16})
        loaded = tf.saved_model.load(str(half))
        inputs = {k: tf.constant(v) for k, v in self.inputs.items()}
        scores = [m.signatures["log_prob"](**inputs)["log_prob"] for m in (loaded, self.loaded)]
        self.assertAllClose(scores[0], scores[1], atol=0.5)  # nats per drawing
        self.assertNotAllEqual(scores[0], scores[1])  # The weights were rounded.
        support, seed = inputs["support"], inputs["seed"]
        probs = [m.signatures["sample"](support=support, seed=seed)["probs"] for m in (loaded, self.loaded)]
        self.assertAllClose(probs[0], probs[1], atol=0.02)
        with self.assertRaisesRegex(errors.ConfigError, "weights_dtype must be one of float32, float16, bfloat16"):
            export.export_model(self.model, self.create_tempdir().full_path, "iwae", "int8")
        # tools/compare_exports.py: same seeds, so an export against itself differs by exactly 0.
        compare = [sys.executable, str(helpers.REPO / "tools" / "compare_exports.py"), f"--data_dir={helpers.DATA_DIR}"]
        compare += ["--episodes=3", "--num_samples=5", "--shots=1", f"--a={self.path}"]
        reports = []
        for other in (self.path, half):
            result = subprocess.run(compare + [f"--b={other}"], capture_output=True, text=True, timeout=300)
            self.assertEqual(result.returncode, 0, result.stderr)
            reports.append(json.loads(result.stdout.strip().splitlines()[-1]))
        self.assertEqual(reports[0]["max_abs_b_minus_a"], [0.0, 0.0])
        self.assertLen(reports[1]["mean_b_minus_a"], 2)
        self.assertLess(max(reports[1]["max_abs_b_minus_a"]), 0.5)
        self.assertGreater(max(reports[1]["max_abs_b_minus_a"]), 0.0)

    def test_each_signature_graph_is_stored_once(self):
        saved = saved_model_pb2.SavedModel.FromString((self.path / "saved_model.pb").read_bytes())
        names = [f.signature.name for f in saved.meta_graphs[0].graph_def.library.function]
        for signature in ("sample", "log_prob"):
            traces = [n for n in names if n.startswith(f"__inference_{signature}_")]
            self.assertLen(traces, 1, f"{signature}: {traces}")

    def test_fresh_process_without_project_code_gives_identical_outputs(self):
        folder = pathlib.Path(self.create_tempdir())
        np.savez(folder / "inputs.npz", **self.inputs)
        result = subprocess.run(
            [sys.executable, "-c", _FRESH_PROCESS, str(self.path), str(folder / "inputs.npz"), str(folder / "out.npz")],
            cwd=folder,  # Not the repo: oneshot_tf must not be importable by accident.
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("LEAKED []", result.stdout)
        fresh = np.load(folder / "out.npz")
        expected = self._in_process()
        for key in ("probs", "images", "log_prob"):
            self.assertAllEqual(fresh[key], expected[key], msg=key)
        self.assertAllEqual(fresh["doubled"], 2.0 * expected["probs"])

    def test_saved_model_cli_gives_identical_outputs(self):
        folder = pathlib.Path(self.create_tempdir())
        for key, value in self.inputs.items():
            np.save(folder / f"{key}.npy", value)
        cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
        expected = self._in_process()
        for signature, keys, outputs in (
            ("sample", ("support", "seed"), ("probs", "images")),
            ("log_prob", ("support", "query", "num_samples", "seed"), ("log_prob",)),
        ):
            out = folder / signature
            result = subprocess.run(
                [str(cli), "run", "--dir", str(self.path), "--tag_set", "serve", "--signature_def", signature,
                 "--inputs", ";".join(f"{k}={folder / k}.npy" for k in keys), "--outdir", str(out)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            self.assertEqual(result.returncode, 0, result.stderr[-3000:])
            for key in outputs:
                self.assertAllEqual(np.load(out / f"{key}.npy"), expected[key], msg=f"{signature}/{key}")
        # The TF1 loader reports bad input with the same message.
        np.save(folder / "bad.npy", self.inputs["support"] * 255.0)
        result = subprocess.run(
            [str(cli), "run", "--dir", str(self.path), "--tag_set", "serve", "--signature_def", "sample",
             "--inputs", f"support={folder / 'bad.npy'};seed={folder / 'seed.npy'}", "--outdir", str(folder / "bad")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("support must be float32 [batch, shots, 28, 28, 1] with values in [0, 1]", result.stderr)

    def test_log_prob_matches_the_evaluator_within_monte_carlo_noise(self):
        support, query = tf.constant(self.inputs["support"]), tf.constant(self.inputs["query"])
        # Same seed: the exported signature computes exactly the model's estimate.
        exported = self.loaded.signatures["log_prob"](
            support=support, query=query, num_samples=tf.constant(200), seed=tf.constant([9, 9])
        )["log_prob"]
        in_process = self.model.log_prob(support, query, 200, tf.constant([9, 9]))
        self.assertAllClose(exported, in_process, rtol=self.EXACT_RTOL, atol=0)
        # The evaluator draws its own samples (chunked): compare against the spread over seeds.
        evaluator = evaluate.per_shot_log_probs(self.model, self.episodes, num_samples=200, seed=0, chunk_size=64)[:, 3]
        repeats = np.stack(
            [
                self.loaded.signatures["log_prob"](
                    support=support, query=query, num_samples=tf.constant(200), seed=tf.constant([r, 0])
                )["log_prob"].numpy()
                for r in range(8)
            ]
        )
        spread = repeats.std(axis=0, ddof=1)
        self.assertTrue(np.all(np.abs(evaluator - repeats.mean(axis=0)) < 4 * spread * np.sqrt(1 + 1 / 8) + 1e-3))

    def test_bad_inputs_fail_with_clear_messages(self):
        sample = self.loaded.signatures["sample"]
        log_prob = self.loaded.signatures["log_prob"]
        seed = tf.constant([0, 0])
        good = tf.constant(self.inputs["support"])
        query = tf.constant(self.inputs["query"])
        cases = [
            (lambda: sample(support=good[:, 0], seed=seed), r"support must be float32 \[batch, shots, 28, 28, 1\]"),
            (lambda: sample(support=tf.zeros([2, 3, 32, 32, 1]), seed=seed), r"support must be float32"),
            (lambda: sample(support=good * np.nan, seed=seed), "support has NaN or Inf values"),
            (lambda: sample(support=good + 1.0, seed=seed), r"values in \[0, 1\]"),
            (lambda: sample(support=good - 1.0, seed=seed), r"values in \[0, 1\]"),
            (lambda: log_prob(support=good, query=query[..., 0], num_samples=tf.constant(5), seed=seed), r"query must be float32 \[batch, 28, 28, 1\]"),
            (lambda: log_prob(support=good, query=query[:2], num_samples=tf.constant(5), seed=seed), "same batch size"),
            (lambda: log_prob(support=good, query=query, num_samples=tf.constant(0), seed=seed), "num_samples must be >= 1"),
        ]  # fmt: skip
        for call, message in cases:
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
                call()

    def test_zero_shots(self):
        out = self.loaded.signatures["sample"](support=tf.zeros([3, 0, 28, 28, 1]), seed=tf.constant([1, 1]))
        self.assertEqual(out["images"].shape, (3, 28, 28, 1))
        # JSON's spelling of zero shots, [[], [], []], is the same request.
        as_json = self.loaded.signatures["sample"](support=tf.zeros([3, 0]), seed=tf.constant([1, 1]))
        self.assertAllEqual(as_json["images"], out["images"])
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "support must be float32"):
            self.loaded.signatures["sample"](support=tf.zeros([3, 2]), seed=tf.constant([1, 1]))

    def test_interrupted_export_leaves_no_version(self):
        root = pathlib.Path(self.create_tempdir())
        with mock.patch.object(tf.saved_model, "save", side_effect=KeyboardInterrupt):
            with self.assertRaises(KeyboardInterrupt):
                export.export_model(self.model, root, "iwae")
        self.assertEqual([p.name for p in (root / "iwae").iterdir() if p.name.isdigit()], [])
        self.assertEqual(export.export_model(self.model, root, "iwae"), root / "iwae" / "1")
        self.assertEqual(sorted(p.name for p in (root / "iwae").iterdir()), ["1"])


class NewestExportTest(tf.test.TestCase):
    def test_a_workdir_without_a_complete_export_says_what_to_run(self):
        workdir = pathlib.Path(self.create_tempdir())
        (workdir / "export" / "iwae" / ".partial-1").mkdir(parents=True)  # An interrupted export.
        with self.assertRaises(errors.ExportNotFoundError) as raised:
            workdir_lib.newest_export(workdir, "iwae")
        self.assertEqual(str(raised.exception), f"no export in {workdir / 'export' / 'iwae'}: run --mode=export")


class HalfPrecisionRangeTest(tf.test.TestCase):
    def test_a_variable_beyond_float16s_range_is_stored_as_it_is(self):
        model = helpers.tiny_model("statistician")
        support, query = helpers.random_images([2, 3, 28, 28, 1], seed=1), helpers.random_images([2, 28, 28, 1], seed=2)
        model.log_weights(support, query, 1, tf.constant([0, 0]))  # Builds it.
        variance = model.statistic.item.chain[1].moving_variance  # The statistic network's first batch norm.
        variance.assign(tf.fill(variance.shape, 2e5))  # Inputs that vary that much: past 65504.
        root = self.create_tempdir().full_path
        full, half = (export.export_model(model, root, "statistician", dtype) for dtype in ("float32", "float16"))
        stored = tf.train.load_checkpoint(str(half / "variables" / "variables"))
        dtypes = [stored.get_variable_to_dtype_map()[k] for k in stored.get_variable_to_shape_map()]
        floating = [d for d in dtypes if d.is_floating]
        self.assertEqual(floating.count(tf.float32), 1)  # That variance, none else.
        self.assertGreater(floating.count(tf.float16), 10)
        inputs = dict(support=support, query=query, num_samples=tf.constant(10), seed=tf.constant([3, 4]))
        scores = [tf.saved_model.load(str(path)).signatures["log_prob"](**inputs)["log_prob"] for path in (full, half)]
        self.assertAllClose(scores[1], scores[0], atol=0.5)


class BFloat16ExportTest(ExportTest):
    """The same contract under mixed_bfloat16: reloads stay bit-identical; against the
    in-process model, bfloat16 rounding differs with the graph's op fusion (~1e-5)."""

    PRECISION = "mixed_bfloat16"
    EXACT_RTOL = 1e-4


class EveryModelExportsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(name=sorted(models.MODELS), weights_dtype=["float32", "float16"])
    def test_export_and_reload(self, name, weights_dtype):
        config = helpers.tiny_config(name)
        model = models.build_model(config.model, **config.model_kwargs.to_dict())
        path = export.export_model(model, self.create_tempdir().full_path, name, weights_dtype)
        loaded = tf.saved_model.load(str(path))
        servable = export.Servable(model)
        for shots in (0, 3):
            support = helpers.random_images([2, shots, 28, 28, 1])
            expected = servable.sample(support, tf.constant([1, shots]))
            out = loaded.signatures["sample"](support=support, seed=tf.constant([1, shots]))
            self.assertAllClose(out["probs"], expected["probs"], atol=1e-6 if weights_dtype == "float32" else 0.02)
            log_prob = loaded.signatures["log_prob"](
                support=support,
                query=helpers.random_images([2, 28, 28, 1], 1),
                num_samples=tf.constant(3),
                seed=tf.constant([0, 0]),
            )["log_prob"]
            self.assertTrue(np.all(np.isfinite(log_prob)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@absltest.skipUnless(
    shutil.which("tensorflow_model_server"),
    "tensorflow_model_server is not on PATH (TF Serving cannot be installed on this machine)",
)
class TfServingTest(tf.test.TestCase):
    def test_rest_sample_and_log_prob(self):
        config = helpers.tiny_config("vae")
        workdir = pathlib.Path(self.create_tempdir())
        train.train_and_evaluate(config, workdir, helpers.DATA_DIR)
        export.export(config, workdir)
        port = _free_port()
        server = subprocess.Popen(
            ["tensorflow_model_server", f"--rest_api_port={port}", "--port=0", "--model_name=vae",
             f"--model_base_path={workdir / 'export' / 'vae'}"]
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/v1/models/vae"
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(url, timeout=5)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(1)
            support = np.zeros([1, 2, 28, 28, 1]).tolist()
            body = {"signature_name": "sample", "inputs": {"support": support, "seed": [1, 2]}}
            request = urllib.request.Request(url + ":predict", json.dumps(body).encode(), method="POST")
            outputs = json.loads(urllib.request.urlopen(request, timeout=60).read())["outputs"]
            self.assertEqual(np.array(outputs["images"]).shape, (1, 28, 28, 1))
            body = {
                "signature_name": "log_prob",
                "inputs": {
                    "support": support,
                    "query": np.zeros([1, 28, 28, 1]).tolist(),
                    "num_samples": 10,
                    "seed": [0, 0],
                },
            }
            request = urllib.request.Request(url + ":predict", json.dumps(body).encode(), method="POST")
            outputs = json.loads(urllib.request.urlopen(request, timeout=60).read())["outputs"]
            self.assertEqual(np.array(outputs).shape, (1,))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


if __name__ == "__main__":
    absltest.main()
