"""The local server speaks TF Serving's REST API over exported SavedModels."""

import json
import pathlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf import errors, export, serve
from tests import helpers

TIMEOUT = 120  # Seconds any one request may take.


def start_server(export_dirs, **app_kwargs):
    """(server, base URL) for a server on a free 127.0.0.1 port, serving in a thread."""
    server = serve.make_server(serve.App(serve.load_models(export_dirs), **app_kwargs), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.port}"


def call(url: str, body=None, method=None):
    """(status, decoded JSON) of one request; `body` is sent as JSON, or as-is if bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def export_tiny(root, name: str) -> pathlib.Path:
    """An untrained tiny `name` model exported as root/<name>/1; returns the version folder."""
    config = helpers.tiny_config(name)
    from oneshot_tf import models

    model = models.build_model(config.model, **config.model_kwargs.to_dict())
    return export.export_model(model, root, name)


class ServerTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = pathlib.Path(tf.compat.v1.test.get_temp_dir()) / "serve_test"
        cls.gmn_path = export_tiny(cls.root, "gmn")
        export_tiny(cls.root, "vae")
        cls.server, cls.url = start_server([cls.root], limits=serve.Limits(max_batch=8, max_num_samples=50))
        cls.loaded = tf.saved_model.load(str(cls.gmn_path))

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()
        super().tearDownClass()

    def test_discovers_models_in_tf_serving_layout(self):
        self.assertEqual(serve.discover([self.root]), {"gmn": (1, self.gmn_path), "vae": (1, self.root / "vae" / "1")})
        self.assertEqual(serve.discover([self.root / "gmn"]), {"gmn": (1, self.gmn_path)})
        with self.assertRaisesRegex(errors.ExportNotFoundError, "holds no SavedModel in TF Serving's layout"):
            serve.discover([self.create_tempdir().full_path])

    def test_status_list_and_metadata(self):
        status, body = call(f"{self.url}/v1/models/gmn")
        self.assertEqual(status, 200)
        self.assertEqual(body["model_version_status"][0]["state"], "AVAILABLE")
        self.assertEqual(
            call(f"{self.url}/v1/models")[1]["models"],
            [{"name": "gmn", "version": "1"}, {"name": "vae", "version": "1"}],
        )
        signatures = call(f"{self.url}/v1/models/gmn/metadata")[1]["metadata"]["signature_def"]["signature_def"]
        self.assertEqual(set(signatures), {"serving_default", "sample", "log_prob"})
        self.assertEqual(signatures["log_prob"]["inputs"]["seed"]["dtype"], "DT_INT32")
        self.assertEqual(signatures["sample"]["outputs"]["probs"]["dtype"], "DT_FLOAT")

    def test_predict_equals_the_signature(self):
        support = helpers.random_images([3, 2, 28, 28, 1]).numpy()
        query = helpers.random_images([3, 28, 28, 1], 1).numpy()
        status, body = call(
            f"{self.url}/v1/models/gmn:predict",
            {"signature_name": "sample", "inputs": {"support": support.tolist(), "seed": [3, 4]}},
        )
        self.assertEqual(status, 200)
        expected = self.loaded.signatures["sample"](support=tf.constant(support), seed=tf.constant([3, 4]))
        self.assertAllEqual(np.array(body["outputs"]["images"]), expected["images"])
        self.assertAllClose(np.array(body["outputs"]["probs"]), expected["probs"], atol=1e-7)
        inputs = {"support": support.tolist(), "query": query.tolist(), "num_samples": 7, "seed": [1, 2]}
        status, body = call(
            f"{self.url}/v1/models/gmn/versions/1:predict", {"signature_name": "log_prob", "inputs": inputs}
        )
        self.assertEqual(status, 200)
        expected = self.loaded.signatures["log_prob"](
            support=tf.constant(support), query=tf.constant(query), num_samples=tf.constant(7), seed=tf.constant([1, 2])
        )["log_prob"]
        # One output: TF Serving's columnar format gives it bare.
        self.assertAllClose(np.array(body["outputs"]), expected, rtol=1e-6)

    def test_bad_requests_get_json_errors_and_the_server_lives(self):
        good = {"support": np.zeros([1, 1, 28, 28, 1]).tolist(), "seed": [0, 0]}
        predict = f"{self.url}/v1/models/gmn:predict"
        cases = [
            (predict, b"{not json", 400, "not JSON"),
            (predict, b"", 400, "empty request body"),
            (predict, [1, 2], 400, "must be a JSON object"),
            (predict, {"instances": [good]}, 400, 'columnar "inputs"'),
            (predict, {"signature_name": "train", "inputs": good}, 400, 'name: "train" not found'),
            (predict, {"inputs": {"support": good["support"]}}, 400, "missing seed"),
            (predict, {"inputs": {**good, "extra": 1}}, 400, "unknown extra"),
            (predict, {"inputs": {**good, "seed": [1, 2, 3]}}, 400, r"'seed' must have shape \[2\]"),
            (predict, {"inputs": {**good, "support": [[1, 2], [3]]}}, 400, "not a rectangular array"),
            (predict, {"inputs": {**good, "support": np.zeros([1, 1, 5, 5, 1]).tolist()}}, 400, r"support must be float32 \[batch, shots, 28, 28, 1\]"),
            (predict, {"inputs": {**good, "support": np.full([1, 1, 28, 28, 1], 2.0).tolist()}}, 400, r"with values in \[0, 1\]"),
            (predict, {"inputs": {**good, "support": np.zeros([9, 1, 28, 28, 1]).tolist()}}, 400, "limit of 8"),
            (predict, {"signature_name": "log_prob", "inputs": {**good, "query": np.zeros([1, 28, 28, 1]).tolist(), "num_samples": 51}}, 400, "limit of 50"),
            (predict, {"signature_name": "log_prob", "inputs": {**good, "query": np.zeros([1, 28, 28, 1]).tolist(), "num_samples": 0}}, 400, "num_samples must be >= 1"),
            (f"{self.url}/v1/models/nope:predict", {"inputs": good}, 404, r"Servable not found for request: Latest\(nope\)"),
            (f"{self.url}/v1/models/gmn/versions/7:predict", {"inputs": good}, 404, r"Specific\(gmn, 7\)"),
            (f"{self.url}/v1/nothing", None, 404, "Not Found"),
        ]  # fmt: skip
        for url, body, expected_status, message in cases:
            status, answer = call(url, body, method="POST" if body is not None else "GET")
            self.assertEqual(status, expected_status, (url, body if isinstance(body, bytes) else "", answer))
            self.assertRegex(answer["error"], message)
        self.assertEqual(call(predict, {"inputs": good})[0], 200)

    def test_request_body_is_bounded(self):
        server, url = start_server([self.root / "vae"], limits=serve.Limits(max_request_bytes=1000))
        try:
            status, body = call(f"{url}/v1/models/vae:predict", {"inputs": {"support": [[0.0] * 500], "seed": [0, 0]}})
        finally:
            server.shutdown()
            server.server_close()
        self.assertEqual(status, 413)
        self.assertIn("limit of 1000 bytes", body["error"])

    def test_page_and_examples(self):
        with urllib.request.urlopen(self.url + "/", timeout=TIMEOUT) as response:
            self.assertIn("Draw a character", response.read().decode())
        self.assertEqual(call(f"{self.url}/static/../serve.py")[0], 404)
        status, body = call(f"{self.url}/v1/examples?seed=5")
        self.assertEqual(status, 404)  # This server was started without data.
        self.assertIn("--data_dir", body["error"])

    def test_serving_client_against_the_server(self):
        tmp = pathlib.Path(self.create_tempdir())
        pngs = []
        for i, image in enumerate(helpers.random_images([3, 28, 28, 1], 5).numpy()):
            pngs.append(tmp / f"{i}.png")
            pngs[-1].write_bytes(tf.io.encode_png(tf.cast((1.0 - image) * 255, tf.uint8)).numpy())
        out = tmp / "samples.png"
        result = subprocess.run(
            [sys.executable, str(helpers.REPO / "tools" / "serving_client.py"), f"--server=127.0.0.1:{self.server.port}",
             "--model=gmn", f"--support={','.join(map(str, pngs))}", "--num_samples=4", f"--out={out}",
             "--score_samples=20"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("3 support images | 4 samples", result.stdout)
        self.assertRegex(result.stdout, r"log p\(support\[-1\] \| support\[:-1\]\) = -\d+\.\d\d nats")
        self.assertEqual(tf.io.decode_png(out.read_bytes()).shape, (28, 3 * 28 + 4 + 4 * 28, 1))


class CommandLineTest(tf.test.TestCase):
    def test_serve_command_starts_serves_and_stops(self):
        root = pathlib.Path(self.create_tempdir())
        export_tiny(root, "vae")
        process = subprocess.Popen(
            [sys.executable, "-m", "oneshot_tf.serve", f"--export_dir={root}", "--port=0", f"--data_dir={helpers.DATA_DIR}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            line = ""
            deadline = time.time() + TIMEOUT
            while "open http://" not in line and time.time() < deadline and process.poll() is None:
                line = process.stdout.readline()
            self.assertIn("Serving vae: open http://127.0.0.1:", line)
            url = line.split("open ")[1].strip().rstrip("/")
            self.assertEqual(call(url + "/v1/models")[1], {"models": [{"name": "vae", "version": "1"}]})
            self.assertEqual(call(url + "/v1/examples?seed=1")[0], 200)
        finally:
            process.terminate()
            process.wait(timeout=30)
        missing = subprocess.run(
            [sys.executable, "-m", "oneshot_tf.serve", f"--export_dir={root / 'nothing'}", "--port=0"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("error: --export_dir", missing.stderr)


class ExamplesTest(tf.test.TestCase):
    def test_random_test_character(self):
        examples = serve.Examples(helpers.DATA_DIR)
        first, again, other = examples.random(3), examples.random(3), examples.random(4)
        self.assertEqual(first, again)
        self.assertNotEqual(first["character"], other["character"])
        self.assertTrue(first["character"].startswith("images_evaluation/"))
        images = np.array(first["images"])
        self.assertEqual(images.shape, (5, 28, 28))
        self.assertEqual(set(np.unique(images)), {0, 1})


if __name__ == "__main__":
    absltest.main()
