"""Tests for the episode sampler and binarisation."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from oneshot_tf.data import episodes, omniglot
from tests import helpers


class EpisodesTest(tf.test.TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.splits = omniglot.load_splits("gmn28", helpers.DATA_DIR)

    def _sample(self, **kwargs):
        images = tf.constant(self.splits["train"].images)
        return {k: v.numpy() for k, v in episodes.sample_episodes(images, tf.constant([3, 4]), **kwargs).items()}

    @parameterized.parameters(
        (20, 1, "balanced"), (10, 3, "balanced"), (10, 3, "random"), (40, 2, "random"), (5, 5, "balanced")
    )
    def test_items_of_a_class_never_repeat(self, set_size, num_classes, class_mix):
        sample = self._sample(batch_size=64, set_size=set_size, num_classes=num_classes, class_mix=class_mix)
        for characters, drawers, labels in zip(sample["characters"], sample["drawers"], sample["labels"]):
            pairs = set(zip(characters.tolist(), drawers.tolist()))
            self.assertLen(pairs, set_size)
            # Labels name characters one to one inside the episode.
            self.assertLen(set(zip(labels.tolist(), characters.tolist())), len(set(labels.tolist())))
            self.assertLessEqual(len(set(characters.tolist())), num_classes)
            self.assertTrue(np.all(drawers < 20) and np.all(drawers >= 0))

    def test_with_replacement_items_repeat_at_the_rate_of_uniform_draws(self):
        # 5 items of one character from 20 drawers: P(some drawer twice) = 1 - 20*19*18*17*16 / 20**5.
        sample = self._sample(batch_size=2000, set_size=5, num_classes=1, with_replacement=True)
        repeats = np.mean([len(set(drawers.tolist())) < 5 for drawers in sample["drawers"]])
        self.assertAllClose(repeats, 1 - 20 * 19 * 18 * 17 * 16 / 20**5, atol=0.04)
        self.assertTrue(np.all(sample["drawers"] < 20) and np.all(sample["drawers"] >= 0))
        expected = self.splits["train"].images[sample["characters"], sample["drawers"]]
        self.assertAllEqual(sample["ink"], expected)
        # More items than drawers is then a valid episode.
        self.assertEqual(
            self._sample(batch_size=1, set_size=30, num_classes=1, with_replacement=True)["ink"].shape[1], 30
        )

    def test_balanced_mix_spreads_items_evenly(self):
        sample = self._sample(batch_size=16, set_size=10, num_classes=3, class_mix="balanced")
        for labels in sample["labels"]:
            self.assertCountEqual(np.bincount(labels, minlength=3).tolist(), [4, 3, 3])

    def test_images_are_the_named_drawings(self):
        sample = self._sample(batch_size=4, set_size=6, num_classes=2)
        expected = self.splits["train"].images[sample["characters"], sample["drawers"]]
        self.assertAllEqual(sample["ink"], expected)

    def test_item_order_is_random(self):
        sample = self._sample(batch_size=64, set_size=20, num_classes=1)
        self.assertGreater(np.mean(sample["drawers"][:, 0] != 0), 0.8)

    def test_stream_is_reproducible_and_resumable(self):
        def stream(start):
            return episodes.episode_dataset(
                self.splits["val"], batch_size=3, set_size=4, binarization="dynamic", seed=7, start=start
            )

        uninterrupted = [b["images"].numpy() for b in stream(0).take(5)]
        again = [b["images"].numpy() for b in stream(0).take(5)]
        resumed = [b["images"].numpy() for b in stream(3).take(2)]
        self.assertAllEqual(uninterrupted[0], again[0])
        self.assertAllEqual(uninterrupted[3], resumed[0])
        self.assertAllEqual(uninterrupted[4], resumed[1])
        self.assertNotAllEqual(uninterrupted[0], uninterrupted[1])
        self.assertEqual(uninterrupted[0].shape, (3, 4, 28, 28, 1))
        self.assertEqual(set(np.unique(uninterrupted[0]).tolist()), {0.0, 1.0})

    def test_binarize(self):
        levels = tf.constant(np.tile(np.arange(256, dtype=np.uint8), (400, 1)))
        fixed = episodes.binarize(levels, "fixed", tf.constant([0, 0])).numpy()
        self.assertAllEqual(fixed[0], (np.arange(256) >= 128).astype(np.float32))
        dynamic = episodes.binarize(levels, "dynamic", tf.constant([0, 0])).numpy()
        self.assertAllClose(dynamic.mean(axis=0), np.arange(256) / 255.0, atol=0.1)
        self.assertAllEqual(dynamic[:, 0], np.zeros(400))
        self.assertAllEqual(dynamic[:, 255], np.ones(400))
        with self.assertRaisesRegex(omniglot.DataError, "valid: fixed, dynamic"):
            episodes.binarize(levels, "otsu", tf.constant([0, 0]))

    def test_bad_episode_shapes(self):
        with self.assertRaisesRegex(omniglot.DataError, "without replacement"):
            self._sample(batch_size=1, set_size=21, num_classes=1)
        with self.assertRaisesRegex(omniglot.DataError, "exceeds the 50 characters"):
            episodes.episode_dataset(self.splits["val"], batch_size=1, set_size=60, num_classes=60)
        with self.assertRaisesRegex(omniglot.DataError, "valid: balanced, random"):
            self._sample(batch_size=1, set_size=2, num_classes=1, class_mix="skewed")

    def test_random_dilation(self):
        images = tf.constant(episodes.all_images(self.splits["val"])[:64])
        same = episodes.random_dilation(images, 0.0, tf.constant([0, 0]))
        self.assertAllEqual(same, images)
        thick = episodes.random_dilation(images, 1.0, tf.constant([0, 0])).numpy()
        self.assertTrue(np.all(thick >= images.numpy()))
        self.assertGreater(thick.mean(), 1.5 * images.numpy().mean())
        half = episodes.random_dilation(images, 0.5, tf.constant([0, 0])).numpy()
        changed = np.any(half != images.numpy(), axis=(1, 2, 3)).mean()
        self.assertBetween(changed, 0.25, 0.75)

    def test_turns_and_flips_are_new_characters(self):
        val = self.splits["val"]
        augmented = omniglot.with_turns_and_flips(val)
        self.assertLen(augmented, 8 * len(val))
        index = {n: i for i, n in enumerate(augmented.names)}
        name = val.names[3]
        original = augmented.images[index[f"{name}/rot000"]]
        self.assertAllEqual(original, val.images[3])
        self.assertAllEqual(augmented.images[index[f"{name}/rot090"]], np.rot90(original, 1, axes=(1, 2)))
        self.assertAllEqual(augmented.images[index[f"{name}/rot000/flip"]], original[..., ::-1])
        self.assertLen(omniglot.with_turns_and_flips(val, flips=False), 4 * len(val))

    def test_fixed_episodes_and_all_images(self):
        a = episodes.fixed_episodes(self.splits["test"], num_episodes=5, set_size=10, num_classes=2, seed=1)
        b = episodes.fixed_episodes(self.splits["test"], num_episodes=5, set_size=10, num_classes=2, seed=1)
        self.assertAllEqual(a["images"], b["images"])
        self.assertEqual(a["images"].shape, (5, 10, 28, 28, 1))
        every = episodes.all_images(self.splits["test"])
        self.assertEqual(every.shape, (659 * 20, 28, 28, 1))


if __name__ == "__main__":
    absltest.main()
