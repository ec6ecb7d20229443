"""The page in a real headless Chromium: draw, get samples and scores, see errors."""

import math
import pathlib
import shutil

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from tests import helpers
from tests.serve_test import export_tiny, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WAIT_MS = 60_000  # Bound on every wait for the page.

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it.
    sync_playwright = None


def _skip_reason():
    if sync_playwright is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if CHROMIUM is None:
        return "no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    return None


if _skip_reason():
    print(f"web_test skipped: {_skip_reason()}")


@absltest.skipIf(_skip_reason() is not None, _skip_reason())
class PageTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = pathlib.Path(tf.compat.v1.test.get_temp_dir()) / "web_test"
        shutil.rmtree(cls.root, ignore_errors=True)
        cls.gmn_path = export_tiny(cls.root, "gmn")
        export_tiny(cls.root, "vae")
        cls.loaded = tf.saved_model.load(str(cls.gmn_path))
        cls.server, cls.url = start_server([cls.root], data_dir=helpers.DATA_DIR)
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.server.shutdown()
        cls.server.server_close()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.context = self.browser.new_context(viewport={"width": 1000, "height": 900}, has_touch=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.goto(self.url + "/")
        self.page.wait_for_function("document.querySelectorAll('#model option').length == 2")

    def tearDown(self):
        self.context.close()
        super().tearDown()

    def _stroke(self, slot: int, points):
        """Drags the mouse through `points` (fractions of the box) in drawing box `slot`."""
        box = self.page.locator("canvas.draw").nth(slot).bounding_box()
        xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
        self.page.mouse.move(*xy[0])
        self.page.mouse.down()
        for x, y in xy[1:]:
            self.page.mouse.move(x, y, steps=8)
        self.page.mouse.up()

    def _support(self) -> np.ndarray:
        return np.array(self.page.evaluate("window.oneshot.supportImages()"), np.float32)

    def test_draw_sample_and_score(self):
        self._stroke(0, [(0.3, 0.2), (0.3, 0.8), (0.7, 0.8)])
        self._stroke(1, [(0.2, 0.5), (0.8, 0.5)])
        self._stroke(1, [(0.5, 0.2), (0.5, 0.8)])
        support = self._support()
        self.assertEqual(support.shape, (2, 28, 28))
        for image in support:  # Strokes survive the downscaling as thin lines, not blobs.
            self.assertBetween(image.sum(), 15, 150)
        self.page.select_option("#model", "gmn")
        self.page.fill("#num-draws", "6")
        self.page.fill("#num-samples", "20")
        self.page.click("#draw")
        self.page.wait_for_function(
            "document.querySelectorAll('#samples img').length == 6 && document.querySelectorAll('#scores tbody tr').length == 2"
        )
        sizes = self.page.eval_on_selector_all(
            "#samples img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight, i.width, i.height])"
        )
        self.assertEqual(sizes, [[28, 28, 56, 56]] * 6)
        last = self.page.evaluate("window.oneshot.last")
        self.assertEqual(last["seed"], [1, 0])
        sent = np.array(last["support"], np.float32)
        self.assertAllEqual(sent[..., 0], support)
        expected = self.loaded.signatures["log_prob"](
            support=tf.constant(np.stack([sent[[1]], sent[[0]]])),
            query=tf.constant(sent),
            num_samples=tf.constant(20),
            seed=tf.constant([1, 0]),
        )["log_prob"].numpy()
        rows = self.page.eval_on_selector_all(
            "#scores tbody tr", "rows => rows.map(r => [r.dataset.nats, ...[...r.cells].map(c => c.textContent)])"
        )
        for (nats, _name, given, shown, bits), want in zip(rows, expected):
            self.assertAllClose(float(nats), want, rtol=1e-5)
            self.assertEqual(shown, f"{want:.2f}")
            self.assertEqual(bits, f"{-want / (784 * math.log(2)):.4f}")
            self.assertEqual(given, "1 other")
        self.assertEqual([r[1] for r in rows], ["#1", "#2"])
        # The samples are the sample signature's for the same support and seed.
        probs = self.loaded.signatures["sample"](
            support=tf.constant(np.repeat(sent[None], 6, 0)), seed=tf.constant([1, 0])
        )
        shown = self.page.evaluate(
            """() => [...document.querySelectorAll('#samples img')].map(img => {
                const c = document.createElement('canvas'); c.width = c.height = 28;
                const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
                return Array.from(ctx.getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 == 0));
            })"""
        )
        expected_pixels = np.round(255 * (1 - probs["probs"].numpy()[..., 0])).reshape(6, -1)
        self.assertAllClose(np.array(shown), expected_pixels, atol=1)
        before = shown
        self.page.click("#more")
        self.page.wait_for_function("document.getElementById('seed-label').textContent.startsWith('(seed 2')")
        self.assertEqual(self.page.evaluate("window.oneshot.last.seed"), [2, 0])
        self.page.wait_for_function("!document.getElementById('draw').disabled")
        after = self.page.eval_on_selector_all("#samples img", "imgs => imgs.map(i => i.src)")
        self.assertLen(after, 6)
        self.assertNotEqual(after, before)
        screenshot = pathlib.Path(self.create_tempdir()) / "page.png"
        self.page.screenshot(path=str(screenshot), full_page=True)
        self.assertGreater(screenshot.stat().st_size, 10_000)

    def test_bad_request_shows_the_server_error(self):
        self._stroke(0, [(0.3, 0.3), (0.7, 0.7)])
        self.page.fill("#num-samples", "0")
        self.page.click("#draw")
        self.page.wait_for_selector("#error:not([hidden])")
        self.assertIn("num_samples must be >= 1", self.page.inner_text("#error"))
        self.page.fill("#num-samples", "10")
        self.page.click("#draw")
        self.page.wait_for_selector("#error", state="hidden")
        # One drawing is scored with no others: zero shots through JSON.
        self.page.wait_for_function("document.querySelectorAll('#scores tbody tr').length == 1")
        self.assertEqual(self.page.inner_text("#scores tbody tr td:nth-child(2)"), "0 others")

    def test_undo_clear_touch_and_random_character(self):
        self._stroke(2, [(0.2, 0.2), (0.8, 0.8)])
        self._stroke(2, [(0.8, 0.2), (0.2, 0.8)])
        one_stroke_more = self._support()[0].sum()
        self.page.click("#undo")
        self.assertLess(self._support()[0].sum(), one_stroke_more)
        self.page.click("#undo")
        self.assertEqual(self._support().shape, (0,))
        box = self.page.locator("canvas.draw").nth(3).bounding_box()
        self.page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        self.assertEqual(self._support().shape, (1, 28, 28))  # A tap is a dot.
        self.page.click("#clear")
        self.assertEqual(self._support().shape, (0,))
        self.page.click("#random")
        self.page.wait_for_function("document.getElementById('status').textContent.startsWith('test character')")
        support = self._support()
        self.assertEqual(support.shape, (5, 28, 28))
        character = self.page.inner_text("#status").removeprefix("test character ")
        self.assertTrue(character.startswith("images_evaluation/"))

    def test_page_against_a_tf_serving_style_upstream(self):
        # The page's model calls go through --upstream to a server that answers only
        # TF Serving's API (here our own), as they would to tensorflow_model_server.
        front, url = start_server([], upstream=self.url)
        try:
            page = self.context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(url + "/?model=gmn")
            page.wait_for_selector("#model-name:not([hidden])")  # No model list upstream.
            self.assertEqual(page.input_value("#model-name"), "gmn")
            page.click("#draw")  # Zero shots: unconditional samples.
            page.wait_for_function("document.querySelectorAll('#samples img').length == 10")
            page.fill("#model-name", "nope")
            page.click("#draw")
            page.wait_for_selector("#error:not([hidden])")
            self.assertIn("Servable not found", page.inner_text("#error"))
        finally:
            front.shutdown()
            front.server_close()


if __name__ == "__main__":
    absltest.main()
