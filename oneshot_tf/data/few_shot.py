"""Few-shot classification data: Lake's 20 one-shot runs, random N-way K-shot
episodes, and binarised MNIST digits for transfer.

All images float32 [..., 28, 28, 1] with ink = 1.0.
"""

import pathlib
import re
import zipfile

import numpy as np
import tensorflow as tf

from oneshot_tf.data import episodes, omniglot


def _find_file(path, relative_candidates) -> pathlib.Path:
    """`path` if it is a file, else the first existing `path / candidate`."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    return next((path / c for c in relative_candidates if (path / c).is_file()), path / relative_candidates[0])


def load_lake_runs(path) -> dict:
    """Reads Lake's `all_runs.zip` (20 runs of 20-way 1-shot classification).

    Args:
      path: the zip, or a data folder holding [omniglot/]one_shot_classification/all_runs.zip.

    Returns:
      dict with `support` [20 runs, 20 classes, 1, 28, 28, 1], `queries`
      [20, 20, 28, 28, 1] and `labels` int32 [20, 20] (class of each query).
    """
    path = _find_file(
        path, ["omniglot/one_shot_classification/all_runs.zip", "one_shot_classification/all_runs.zip", "all_runs.zip"]
    )
    if not path.exists():
        raise omniglot.DataError(f"Lake's runs: {path} not found (expected one_shot_classification/all_runs.zip)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise omniglot.DataError(f"Lake's runs: {path} is not a readable zip: {e}") from e
    support, queries, labels = [], [], []
    with archive:
        for run in range(1, 21):
            pairs = archive.read(f"run{run:02d}/class_labels.txt").decode().split()
            items, classes = pairs[0::2], pairs[1::2]
            class_files = [f"run{run:02d}/training/class{c:02d}.png" for c in range(1, 21)]
            decoded = omniglot.decode_to_28([archive.read(n) for n in class_files + items])
            binary = episodes.fixed_binary(decoded)[..., None]
            support.append(binary[:20, None])
            queries.append(binary[20:])
            labels.append([int(re.search(r"class(\d+)", c)[1]) - 1 for c in classes])
    return {"support": np.stack(support), "queries": np.stack(queries), "labels": np.asarray(labels, np.int32)}


def random_episodes(characters, *, ways: int, shots: int, num_episodes: int, seed: int = 0) -> dict:
    """N-way K-shot episodes: K support drawings and 1 query per class.

    Returns:
      dict with `support` [E, ways, shots, 28, 28, 1], `queries` [E, ways, 28, 28, 1]
      and `labels` int32 [E, ways] (query i is of class i).
    """
    drawn = episodes.sample_episodes(
        tf.constant(characters.images),
        tf.constant([seed, 12345]),
        batch_size=num_episodes,
        set_size=ways * (shots + 1),
        num_classes=ways,
        class_mix="balanced",
    )
    order = np.argsort(drawn["labels"].numpy(), axis=1, kind="stable")  # Group items by class.
    ink = np.take_along_axis(drawn["ink"].numpy(), order[..., None, None], axis=1)
    binary = episodes.fixed_binary(ink).reshape(num_episodes, ways, shots + 1, 28, 28, 1)
    return {
        "support": binary[:, :, :shots],
        "queries": binary[:, :, shots],
        "labels": np.tile(np.arange(ways, dtype=np.int32), (num_episodes, 1)),
    }


def _tfds_mnist_digits(data_dir) -> list | None:
    """The MNIST test digits of a tensorflow-datasets `mnist` prepared in `data_dir`,
    thresholded at half ink; None when there is none (never downloads)."""
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder("mnist", data_dir=str(data_dir))
        if not builder.is_prepared():
            return None
        images, labels = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1, as_supervised=True))
    except Exception:  # A missing or foreign tfds folder: no tfds MNIST here.
        return None
    binary = (images[..., 0] >= 128).astype(np.float32)
    return [binary[labels == d] for d in range(10)]


def load_mnist(path) -> omniglot.CharacterSet:
    """Binarised MNIST test digits as a CharacterSet of 10 'characters'.

    Reads `mnist/binarized_mnist_test.npz` under `path` (or `path` itself), else a
    tensorflow-datasets `mnist` prepared locally in `path`. Every digit keeps the first
    n drawings, n = the smallest class size (892 in the npz), so the array is
    rectangular; ink levels are 0 or 255.
    """
    npz = _find_file(path, ["mnist/binarized_mnist_test.npz", "binarized_mnist_test.npz"])
    if npz.exists():
        try:
            with np.load(npz) as arrays:
                digits = [arrays[str(d)] for d in range(10)]
        except (OSError, ValueError, KeyError) as e:
            raise omniglot.DataError(f"MNIST: cannot read {npz} as an npz with keys '0'..'9': {e}") from e
    else:
        digits = _tfds_mnist_digits(path) if pathlib.Path(path).is_dir() else None
        if digits is None:
            raise omniglot.DataError(
                f"MNIST: {npz} not found (expected mnist/binarized_mnist_test.npz, or a prepared tfds mnist in {path})"
            )
    count = min(len(d) for d in digits)
    images = np.stack([d[:count] for d in digits]).reshape(10, count, 28, 28)
    return omniglot.CharacterSet(tuple(str(d) for d in range(10)), (images * 255).astype(np.uint8))
