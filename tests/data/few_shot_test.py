"""Few-shot tasks: Lake's 20 runs, random N-way K-shot episodes, MNIST digits."""

import pathlib
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf.data import few_shot, omniglot
from tests import helpers


class FewShotTasksTest(tf.test.TestCase):
    def test_lake_runs(self):
        runs = few_shot.load_lake_runs(helpers.DATA_DIR)
        self.assertEqual(runs["support"].shape, (20, 20, 1, 28, 28, 1))
        self.assertEqual(runs["queries"].shape, (20, 20, 28, 28, 1))
        # Each run has one query per class.
        for labels in runs["labels"]:
            self.assertCountEqual(labels.tolist(), range(20))
        ink = runs["queries"].mean()
        self.assertBetween(ink, 0.03, 0.2)  # ink = 1.0 and is the minority

    def test_missing_runs_and_mnist(self):
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(omniglot.DataError, "all_runs.zip"):
            few_shot.load_lake_runs(empty)
        with self.assertRaisesRegex(omniglot.DataError, "binarized_mnist_test.npz"):
            few_shot.load_mnist(empty)

    def test_mnist_from_a_prepared_tfds_folder(self):
        labels = np.repeat(np.arange(10), 3)
        images = np.zeros((30, 28, 28, 1), np.uint8)
        images[np.arange(30), labels, 0, 0] = 200  # Digit d has ink at (d, 0).
        builder = mock.Mock()
        builder.is_prepared.return_value = True
        empty = self.create_tempdir().full_path
        with (
            mock.patch("tensorflow_datasets.builder", return_value=builder) as make_builder,
            mock.patch("tensorflow_datasets.as_numpy", return_value=(images, labels)),
        ):
            mnist = few_shot.load_mnist(empty)
        make_builder.assert_called_once_with("mnist", data_dir=empty)
        self.assertEqual(mnist.images.shape, (10, 3, 28, 28))
        for digit in range(10):
            self.assertTrue(np.all(mnist.images[digit, :, digit, 0] == 255))
        builder.is_prepared.return_value = False
        with mock.patch("tensorflow_datasets.builder", return_value=builder):
            with self.assertRaisesRegex(omniglot.DataError, "or a prepared tfds mnist"):
                few_shot.load_mnist(empty)

    def test_corrupt_mnist_npz_names_the_file(self):
        folder = pathlib.Path(self.create_tempdir())
        (folder / "binarized_mnist_test.npz").write_bytes(b"not an npz")
        with self.assertRaisesRegex(omniglot.DataError, "cannot read .*binarized_mnist_test.npz"):
            few_shot.load_mnist(folder)

    def test_random_episodes_group_classes(self):
        # Drawing d of character c has ink at (0, c) and (1, d) only, so every image
        # says which character and drawer it is.
        num_characters, num_drawers = 12, 20
        images = np.zeros((num_characters, num_drawers, 28, 28), np.uint8)
        for c in range(num_characters):
            images[c, :, 0, c] = 255
            for d in range(num_drawers):
                images[c, d, 1, d] = 255
        characters = omniglot.CharacterSet(tuple(f"c{c}" for c in range(num_characters)), images)
        task = few_shot.random_episodes(characters, ways=5, shots=3, num_episodes=20, seed=4)
        self.assertEqual(task["support"].shape, (20, 5, 3, 28, 28, 1))
        self.assertEqual(task["queries"].shape, (20, 5, 28, 28, 1))
        items = np.concatenate([task["support"], task["queries"][:, :, None]], axis=2)[..., 0]  # [E, ways, 4, 28, 28]
        character = items[..., 0, :].argmax(-1)
        drawer = items[..., 1, :].argmax(-1)
        for e in range(20):
            self.assertLen(set(character[e, :, 0]), 5)  # Five different characters.
            for way in range(5):
                # The support and the query of class `way` (its label) are one character,
                # by four different drawers.
                self.assertLen(set(character[e, way]), 1)
                self.assertLen(set(drawer[e, way]), 4)
        self.assertAllEqual(task["labels"], np.tile(np.arange(5), (20, 1)))


if __name__ == "__main__":
    absltest.main()
