"""Tests for the Omniglot sources and splits, on ../shared/data (read only)."""

import pathlib
import tempfile
import zipfile

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from oneshot_tf.data import omniglot
from tests import helpers


class SourcesTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cache_dir = tempfile.mkdtemp()
        cls.gmn = omniglot.load_gmn28(helpers.DATA_DIR)
        cls.upstream = omniglot.load_upstream(helpers.OMNIGLOT_DIR, cache_dir=cls.cache_dir)

    def test_sizes(self):
        for source in (self.gmn, self.upstream):
            self.assertLen(source[omniglot.BACKGROUND], 964)
            self.assertLen(source[omniglot.EVALUATION], 659)
            self.assertEqual(source[omniglot.BACKGROUND].images.shape[1:], (20, 28, 28))
            self.assertEqual(source[omniglot.BACKGROUND].images.dtype, np.uint8)

    def test_sources_agree_on_the_same_characters(self):
        gmn = omniglot._merge(self.gmn[omniglot.BACKGROUND], self.gmn[omniglot.EVALUATION])
        upstream = omniglot._merge(self.upstream[omniglot.BACKGROUND], self.upstream[omniglot.EVALUATION])
        self.assertEqual(gmn.names, upstream.names)

        def binary(images):
            return (images >= 128).reshape(20, -1).astype(np.float32)

        def mismatch(a, b):
            # GMN rows are not in drawer order: match each drawing to its nearest row.
            return float(((a[:, None] - b[None]) ** 2).mean(-1).min(axis=1).mean())

        same, other = [], []
        for i in range(0, len(gmn), 50):
            a, b = binary(gmn.images[i]), binary(upstream.images[i])
            # Polarity: ink (1 after binarisation) is the minority in both.
            self.assertLess(a.mean(), 0.3)
            self.assertLess(b.mean(), 0.3)
            self.assertAllClose(a.mean(), b.mean(), atol=0.03)
            same.append(mismatch(b, a))
            other.append(mismatch(b, binary(gmn.images[i + 1])))
        # The GMN arrays were downsampled by other code: ~4.6% of pixels differ, about
        # half of what separates two different characters.
        self.assertLess(np.mean(same), 0.055)
        self.assertLess(np.mean(same), 0.7 * np.mean(other))

    def test_cache_makes_the_second_load_skip_decoding(self):
        cached = list(pathlib.Path(self.cache_dir).glob("images_background_*.npz"))
        self.assertLen(cached, 1)
        again = omniglot.load_upstream(helpers.OMNIGLOT_DIR, cache_dir=self.cache_dir)
        self.assertAllEqual(again[omniglot.BACKGROUND].images, self.upstream[omniglot.BACKGROUND].images)

    def test_unpacked_folder_equals_zip(self):
        root = pathlib.Path(self.create_tempdir())
        with zipfile.ZipFile(helpers.OMNIGLOT_DIR / "images_evaluation.zip") as archive:
            members = [m for m in archive.namelist() if "/Kannada/character36/" in m]
            archive.extractall(root, members)
        files = list(omniglot._upstream_files(root / "images_evaluation"))
        self.assertLen(files, 20)
        decoded = omniglot._group_by_character(
            [(n, d) for n, d, _ in files], omniglot.decode_to_28([r() for *_, r in files]), "x"
        )
        expected = self.upstream[omniglot.EVALUATION].select(["images_evaluation/Kannada/character36"])
        self.assertAllEqual(decoded.images, expected.images)

    def test_tfds_examples_convert_like_upstream(self):
        # tfds' omniglot stores the upstream PNGs as 105x105 RGB; feed it such examples.
        name = "images_evaluation/Kannada/character36"
        with zipfile.ZipFile(helpers.OMNIGLOT_DIR / "images_evaluation.zip") as archive:
            members = sorted(m for m in archive.namelist() if "/Kannada/character36/" in m)
            gray = [tf.io.decode_png(archive.read(m), channels=1).numpy() for m in members]
        rgb = np.stack([np.repeat(g, 3, axis=-1) for g in gray])
        alphabets = ["Angelic", "Kannada"]
        dataset = tf.data.Dataset.from_tensor_slices(
            {
                "image": rgb,
                "alphabet": np.full(len(rgb), 1, np.int64),
                "alphabet_char_id": np.full(len(rgb), 35, np.int64),
            }
        )
        converted = omniglot.tfds_to_characters(dataset, alphabets, omniglot.EVALUATION)
        self.assertEqual(converted.names, (name,))
        self.assertAllEqual(converted.images, self.upstream[omniglot.EVALUATION].select([name]).images)


class ErrorsTest(tf.test.TestCase):
    def test_missing_source_names_path_and_expectation(self):
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(omniglot.DataError, f"train_small.npz in {empty}"):
            omniglot.load_splits("gmn28", empty)
        with self.assertRaisesRegex(omniglot.DataError, "images_background.zip"):
            omniglot.load_splits("upstream", empty, cache_dir=empty)
        with self.assertRaisesRegex(omniglot.DataError, "no Omniglot source in"):
            omniglot.load_splits("auto", empty)
        with self.assertRaisesRegex(omniglot.DataError, "does not exist"):
            omniglot.load_splits("auto", empty + "/nope")

    def test_malformed_sources(self):
        folder = pathlib.Path(self.create_tempdir())
        (folder / "train_small.npz").write_bytes(b"not an npz")
        (folder / "test_small.npz").write_bytes(b"not an npz")
        with self.assertRaisesRegex(omniglot.DataError, "cannot read .*train_small.npz"):
            omniglot.load_gmn28(folder)
        np.savez(folder / "train_small.npz", **{"images_background/A/character01": np.zeros((20, 100), np.uint8)})
        with self.assertRaisesRegex(omniglot.DataError, r"expected \(20, 784\) uint8"):
            omniglot.load_gmn28(folder)
        (folder / "images_background.zip").write_bytes(b"PK broken")
        with self.assertRaisesRegex(omniglot.DataError, "not a readable zip"):
            omniglot.load_upstream(folder, cache_dir=folder)

    def test_bad_upstream_files_are_named(self):
        upstream = helpers.OMNIGLOT_DIR / "images_background_small2.zip"
        folder = pathlib.Path(self.create_tempdir())
        data = upstream.read_bytes()
        (folder / "images_background.zip").write_bytes(data[: len(data) // 2])  # Cut: no central directory.
        with self.assertRaisesRegex(omniglot.DataError, "images_background.zip is not a readable zip"):
            omniglot.load_upstream(folder, cache_dir=folder)
        # An unpacked folder: an empty one, then one with a file that is not a PNG.
        (folder / "images_background.zip").unlink()
        character = folder / "images_background" / "Alphabet" / "character01"
        character.mkdir(parents=True)
        with self.assertRaisesRegex(omniglot.DataError, "holds no images_background/<Alphabet>"):
            omniglot.load_upstream(folder, cache_dir=folder)
        (character / "0001_01.png").write_text("this is not an image")
        with self.assertRaisesRegex(omniglot.DataError, r"character01/0001_01.png is not a PNG image"):
            omniglot.load_upstream(folder, cache_dir=folder)

    def test_damaged_cache_is_rebuilt(self):
        cache = pathlib.Path(self.create_tempdir()) / "cache.npz"
        built = omniglot.CharacterSet(("a",), np.zeros((1, 20, 28, 28), np.uint8))
        cache.write_bytes(b"cut")
        with self.assertWarnsRegex(UserWarning, "ignoring the unreadable cache"):
            self.assertEqual(omniglot._cached(cache, lambda: built).names, ("a",))
        self.assertEqual(omniglot._cached(cache, lambda: None).names, ("a",))  # Now read from the cache.

    def test_tfds_without_prepared_data_fails_without_downloading(self):
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(omniglot.DataError, "not prepared .*downloading is off"):
            omniglot.load_tfds(empty, download=False)

    def test_unknown_source_and_split(self):
        with self.assertRaisesRegex(omniglot.DataError, "valid: auto, gmn28, upstream, tfds"):
            omniglot.load_splits("mnist", helpers.DATA_DIR)
        with self.assertRaisesRegex(omniglot.DataError, "valid: lake, vinyals, random"):
            omniglot.load_splits("gmn28", helpers.DATA_DIR, split="alphabets")


class SplitsTest(tf.test.TestCase):
    def test_lake_carves_validation_from_training(self):
        splits = omniglot.load_splits("auto", helpers.DATA_DIR, num_val_characters=50)
        self.assertLen(splits["train"], 914)
        self.assertLen(splits["val"], 50)
        self.assertLen(splits["test"], 659)
        self.assertEmpty(set(splits["train"].names) & set(splits["val"].names))
        self.assertTrue(all(n.startswith(omniglot.BACKGROUND) for n in splits["val"].names))
        self.assertTrue(all(n.startswith(omniglot.EVALUATION) for n in splits["test"].names))

    def test_vinyals_split_with_rotations(self):
        splits = omniglot.load_splits("gmn28", helpers.DATA_DIR, split="vinyals")
        self.assertEqual([len(splits[p]) for p in ("train", "val", "test")], [4112, 688, 1692])
        train = splits["train"]
        index = {n: i for i, n in enumerate(train.names)}
        base = index["images_evaluation/Angelic/character01/rot000"]
        turned = index["images_evaluation/Angelic/character01/rot090"]
        self.assertAllEqual(np.rot90(train.images[base], 1, axes=(1, 2)), train.images[turned])
        self.assertEmpty(
            {n.rsplit("/", 1)[0] for n in train.names} & {n.rsplit("/", 1)[0] for n in splits["test"].names}
        )

    def test_random_split_is_the_vinyals_sizes_from_every_alphabet(self):
        def alphabet(name):
            return name.split("/")[1]

        def character(name):
            return name.rsplit("/", 1)[0]

        splits = omniglot.load_splits("gmn28", helpers.DATA_DIR, split="random", seed=0)
        self.assertEqual([len(splits[p]) for p in ("train", "val", "test")], [4112, 688, 1692])
        characters = {p: {character(n) for n in splits[p].names} for p in ("train", "val", "test")}
        self.assertEqual([len(characters[p]) for p in ("train", "val", "test")], list(omniglot.VINYALS_SIZES))
        self.assertEmpty(characters["train"] & characters["test"])
        self.assertEmpty(characters["val"] & (characters["train"] | characters["test"]))
        # Every test character in its 4 rotations, each the turned drawings.
        test = splits["test"]
        index = {n: i for i, n in enumerate(test.names)}
        some = sorted(characters["test"])[7]
        for degrees in (90, 180, 270):
            self.assertAllEqual(
                np.rot90(test.images[index[f"{some}/rot000"]], degrees // 90, axes=(1, 2)),
                test.images[index[f"{some}/rot{degrees:03d}"]],
            )
        # Unlike the vinyals files, test alphabets are training alphabets.
        training_alphabets = {alphabet(n) for n in splits["train"].names}
        self.assertGreaterEqual(len({alphabet(n) for n in test.names}), 45)
        self.assertTrue(all(alphabet(n) in training_alphabets for n in test.names))
        vinyals = omniglot.load_splits("gmn28", helpers.DATA_DIR, split="vinyals")
        vinyals_training_alphabets = {alphabet(n) for n in vinyals["train"].names}
        self.assertEqual(sum(alphabet(n) in vinyals_training_alphabets for n in vinyals["test"].names), 16)
        # The same characters whatever the run's seed.
        again = omniglot.load_splits("gmn28", helpers.DATA_DIR, split="random", seed=1)
        self.assertEqual(again["test"].names, test.names)
        self.assertEqual(again["val"].names, splits["val"].names)


if __name__ == "__main__":
    absltest.main()
