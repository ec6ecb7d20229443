"""Omniglot characters as 28x28 arrays, from any of three sources, and its splits.

Every source gives the same thing: a `CharacterSet` whose `images` are uint8 ink
levels, shape [num_characters, num_drawers, 28, 28], 255 = full ink, 0 = background
(binarise with `episodes.binarize`). Character names follow the upstream layout,
`images_background/<Alphabet>/<characterNN>` (plus `/rotDDD` for rotated copies).

Sources (SPEC §2):
  * `gmn28`: the GMN paper's `train_small.npz` / `test_small.npz` (binary, background
    = 255 in the file: inverted here).
  * `upstream`: a folder holding `images_background.zip` / `images_evaluation.zip` or
    their unpacked folders. 105x105 PNGs are area-downsampled to 28x28 grey levels;
    the decoded arrays are cached (`cache_dir`) so decoding 32k PNGs happens once.
  * `tfds`: the `omniglot` tensorflow-datasets builder (105x105 RGB). Downloads only
    when `tfds_download=True`; otherwise the prepared dataset must be in `data_dir`.
  * `auto`: the first of gmn28, upstream, tfds found in `data_dir`.

Splits: `lake` trains on the 30 background alphabets and tests on the 20 evaluation
alphabets; `vinyals` uses the split files of Vinyals et al. (2016), rotations
included (whole alphabets: its 423 test characters come from 13 alphabets, 12 of them
unseen in training); `random` has the same 1028 / 172 / 423 characters a part and the
same rotations, drawn at random from all 50 alphabets (as the public Neural
Statistician code splits), so its test characters share alphabets with training
ones (with RANDOM_SPLIT_SEED, every one does). Validation characters are never test characters.
"""

import dataclasses
import hashlib
import os
import pathlib
import re
import warnings
import zipfile

import numpy as np

IMAGE_SIZE = 28
NUM_DRAWERS = 20
BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
SOURCES = ("auto", "gmn28", "upstream", "tfds")
SPLITS = ("lake", "vinyals", "random")
# Splits whose classes are characters in each of 4 rotations (so turning them adds nothing).
ROTATED_SPLITS = ("vinyals", "random")
# Characters a part (train, val, test) of the vinyals split files, and so of `random`.
VINYALS_SIZES = (1028, 172, 423)
# The `random` split's permutation: fixed, so that every run, whatever its seed, tests
# on the same characters.
RANDOM_SPLIT_SEED = 0
_GMN_FILES = {BACKGROUND: "train_small.npz", EVALUATION: "test_small.npz"}


class DataError(ValueError):
    """A data source is missing or malformed, or the data config asks for what it
    cannot give; the message names the path or field and what was expected."""


# Where the project's machines keep the data: beside the repository.
_SHARED_DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


def default_data_dir() -> pathlib.Path:
    """$ONESHOT_TF_DATA_DIR, else ../shared/data beside the repository, else ./data.

    Raises DataError naming the places looked in when none is a directory.
    """
    candidates = [os.environ.get("ONESHOT_TF_DATA_DIR"), _SHARED_DATA, pathlib.Path("data")]
    for candidate in candidates:
        if candidate and pathlib.Path(candidate).is_dir():
            return pathlib.Path(candidate)
    looked = ", ".join(str(c) for c in candidates if c)
    raise DataError(f"no data directory: pass --data_dir or set $ONESHOT_TF_DATA_DIR (looked in {looked})")


@dataclasses.dataclass(frozen=True)
class CharacterSet:
    """Characters with all their drawings.

    Attributes:
      names: character names, length num_characters.
      images: uint8 ink levels (255 = ink), shape [num_characters, num_drawers, 28, 28].
    """

    names: tuple
    images: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be [characters, drawers, 28, 28], got {self.images.shape}")
        if len(self.names) != self.images.shape[0]:
            raise ValueError(f"{len(self.names)} names for {self.images.shape[0]} characters")

    def __len__(self) -> int:
        return len(self.names)

    def select(self, names) -> "CharacterSet":
        index = {name: i for i, name in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(f"{len(missing)} characters not in this source, e.g. {missing[:3]}")
        return CharacterSet(tuple(names), self.images[[index[n] for n in names]])


def _merge(*sets: CharacterSet) -> CharacterSet:
    return CharacterSet(tuple(n for s in sets for n in s.names), np.concatenate([s.images for s in sets]))


# ----------------------------------------------------------------------------- sources


def _find(data_dir: pathlib.Path, names) -> pathlib.Path | None:
    """The first of `names` under data_dir, data_dir/omniglot or data_dir/gmn_28x28."""
    for folder in (data_dir, data_dir / "omniglot", data_dir / "gmn_28x28", data_dir / "omniglot" / "gmn_28x28"):
        for name in names:
            if (folder / name).exists():
                return folder / name
    return None


def load_gmn28(data_dir) -> dict:
    """Reads the GMN paper's arrays. Returns {BACKGROUND: CharacterSet, EVALUATION: ...}."""
    data_dir = pathlib.Path(data_dir)
    result = {}
    for part, filename in _GMN_FILES.items():
        path = _find(data_dir, [filename])
        if path is None:
            raise DataError(f"gmn28 source: no {filename} in {data_dir} (or its omniglot/, gmn_28x28/)")
        try:
            arrays = np.load(path)
            names = sorted(arrays.files)
            images = np.stack([arrays[k] for k in names])
        except Exception as e:  # A truncated or foreign file.
            raise DataError(f"gmn28 source: cannot read {path} as an npz of (20, 784) uint8 arrays: {e}") from e
        if images.shape[1:] != (NUM_DRAWERS, IMAGE_SIZE * IMAGE_SIZE) or images.dtype != np.uint8:
            raise DataError(
                f"gmn28 source: {path} holds {images.shape[1:]} {images.dtype} arrays, expected (20, 784) uint8"
            )
        if not all(n.startswith(part + "/") for n in names):
            raise DataError(f"gmn28 source: keys in {path} must start with '{part}/', got e.g. {names[0]!r}")
        # The file stores background = 255, ink = 0.
        ink = 255 - images.reshape(-1, NUM_DRAWERS, IMAGE_SIZE, IMAGE_SIZE)
        result[part] = CharacterSet(tuple(names), ink)
    return result


_PNG_NAME = re.compile(r"(?:^|/)(images_(?:background|evaluation))/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _upstream_files(path: pathlib.Path):
    """Yields (character name, drawer, png bytes reader) from a zip or an unpacked folder.

    The reader raises DataError naming the file when it cannot be read or is not a PNG.
    """
    if path.suffix == ".zip":
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"upstream source: {path} is not a readable zip: {e}") from e
        for member in archive.namelist():
            match = _PNG_NAME.search(member)
            if match:
                yield f"{match[1]}/{match[2]}/{match[3]}", int(match[5]), lambda m=member: _png(archive.read, m, path)
    else:
        for file in path.rglob("*.png"):
            match = _PNG_NAME.search(file.as_posix())
            if match:
                yield (
                    f"{match[1]}/{match[2]}/{match[3]}",
                    int(match[5]),
                    lambda f=file: _png(pathlib.Path.read_bytes, f),
                )


def _png(read, where, archive=None) -> bytes:
    name = f"{archive}:{where}" if archive else str(where)
    try:
        data = read(where)
    except (OSError, zipfile.BadZipFile, EOFError) as e:  # A cut zip fails on its members.
        raise DataError(f"upstream source: cannot read {name}: {e}") from e
    if not data.startswith(_PNG_SIGNATURE):
        raise DataError(f"upstream source: {name} is not a PNG image")
    return data


def _fingerprint(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def decode_to_28(pngs: list, channels: int = 1) -> np.ndarray:
    """Decodes upstream-polarity PNGs (white background) to 28x28 uint8 ink levels.

    Args:
      pngs: encoded PNG bytes, 105x105 (any size works), 1 or 3 channels.
      channels: channels to decode to before averaging.

    Returns:
      uint8 [len(pngs), 28, 28], 255 = ink; area-downsampled grey levels.
    """
    import tensorflow as tf

    def decode(png):
        image = tf.cast(tf.io.decode_png(png, channels=channels), tf.float32)
        ink = 1.0 - tf.reduce_mean(image, axis=-1, keepdims=True) / 255.0
        small = tf.image.resize(ink, [IMAGE_SIZE, IMAGE_SIZE], method="area")
        return tf.cast(tf.round(small[..., 0] * 255.0), tf.uint8)

    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(pngs, dtype=tf.string))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(1024)
    return np.concatenate([batch.numpy() for batch in dataset]) if pngs else np.zeros((0, 28, 28), np.uint8)


def _group_by_character(entries, images, where) -> CharacterSet:
    by_name = {}
    for (name, drawer), image in zip(entries, images):
        by_name.setdefault(name, {})[drawer] = image
    names = sorted(by_name)
    bad = [n for n in names if len(by_name[n]) != NUM_DRAWERS]
    if bad:
        raise DataError(f"{where}: characters must have {NUM_DRAWERS} drawings; {bad[0]} has {len(by_name[bad[0]])}")
    stacked = np.stack([np.stack([by_name[n][d] for d in sorted(by_name[n])]) for n in names])
    return CharacterSet(tuple(names), stacked)


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ONESHOT_TF_CACHE_DIR", pathlib.Path.home() / ".cache" / "oneshot_tf"))


def _cached(cache: pathlib.Path, build) -> CharacterSet:
    """The CharacterSet saved at `cache` (an .npz), or `build()` saved there first.

    Written to a partial file and renamed, so an interrupted run leaves no cache.
    """
    if cache.exists():
        try:
            with np.load(cache) as cached:
                return CharacterSet(tuple(cached["names"].tolist()), cached["images"])
        except (OSError, ValueError, KeyError, EOFError) as e:  # A damaged cache is rebuilt, not fatal.
            warnings.warn(f"ignoring the unreadable cache {cache} ({e}); decoding again", stacklevel=2)
    characters = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npz")
    np.savez(partial, names=np.array(characters.names), images=characters.images)
    os.replace(partial, cache)
    return characters


def load_upstream(data_dir, cache_dir=None) -> dict:
    """Reads upstream zips or folders, decoding once and caching the 28x28 arrays."""
    data_dir = pathlib.Path(data_dir)
    cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    result = {}
    for part in (BACKGROUND, EVALUATION):
        path = _find(data_dir, [part + ".zip", part])
        if path is None:
            raise DataError(f"upstream source: neither {part}.zip nor {part}/ in {data_dir} (or its omniglot/)")

        def decode(path=path, part=part):
            files = list(_upstream_files(path))
            if not files:
                raise DataError(f"upstream source: {path} holds no {part}/<Alphabet>/<characterNN>/NNNN_DD.png files")
            images = decode_to_28([read() for _, _, read in files])
            return _group_by_character([(n, d) for n, d, _ in files], images, str(path))

        result[part] = _cached(cache_dir / f"{part}_{_fingerprint([path])}.npz", decode)
    return result


def tfds_to_characters(dataset, alphabet_names, part: str) -> CharacterSet:
    """Groups tfds `omniglot` examples (105x105x3 uint8) into a CharacterSet.

    Args:
      dataset: a tf.data.Dataset of dicts with `image` [105, 105, 3], `alphabet`
        (index into alphabet_names) and `alphabet_char_id` (0-based).
      alphabet_names: names of the tfds `alphabet` ClassLabel.
      part: BACKGROUND or EVALUATION, the name prefix.
    """
    import tensorflow as tf

    entries, pngs, counts = [], [], {}
    for example in dataset.as_numpy_iterator():
        name = f"{part}/{alphabet_names[example['alphabet']]}/character{example['alphabet_char_id'] + 1:02d}"
        counts[name] = counts.get(name, 0) + 1
        entries.append((name, counts[name]))
        pngs.append(tf.io.encode_png(example["image"]).numpy())
    return _group_by_character(entries, decode_to_28(pngs, channels=3), f"tfds omniglot ({part})")


def load_tfds(data_dir, download: bool = False, cache_dir=None) -> dict:
    """Reads the tfds `omniglot` builder's train (background) and test (evaluation) splits."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("omniglot", data_dir=str(data_dir) if data_dir else None)
    if not download and not builder.is_prepared():
        raise DataError(
            f"tfds source: omniglot is not prepared in {builder.data_dir} and downloading is off "
            "(set --config.data.tfds_download=True on a machine with internet)"
        )
    if download:
        builder.download_and_prepare()
    cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256(builder.data_dir.encode()).hexdigest()[:16]
    names = builder.info.features["alphabet"].names
    splits = {BACKGROUND: "train", EVALUATION: "test"}
    return {
        part: _cached(
            cache_dir / f"tfds_{key}_{part}.npz",
            lambda part=part: tfds_to_characters(builder.as_dataset(split=splits[part]), names, part),
        )
        for part in (BACKGROUND, EVALUATION)
    }


def resolve_source(source: str, data_dir) -> str:
    """Picks a concrete source for `auto`: gmn28, then upstream, then tfds."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    if source != "auto":
        return source
    data_dir = pathlib.Path(data_dir)
    if _find(data_dir, [_GMN_FILES[BACKGROUND]]):
        return "gmn28"
    if _find(data_dir, [BACKGROUND + ".zip", BACKGROUND]):
        return "upstream"
    if (data_dir / "omniglot").is_dir() and any((data_dir / "omniglot").glob("*/dataset_info.json")):
        return "tfds"
    raise DataError(
        f"no Omniglot source in {data_dir}: expected gmn_28x28/train_small.npz, "
        "images_background.zip (or folder), or a prepared tfds omniglot/ dataset"
    )


def load_source(source: str, data_dir, *, tfds_download: bool = False, cache_dir=None) -> dict:
    """Loads both halves of Omniglot. Returns {BACKGROUND: CharacterSet, EVALUATION: CharacterSet}."""
    if data_dir is not None and not pathlib.Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    source = resolve_source(source, data_dir)
    if source == "gmn28":
        return load_gmn28(data_dir)
    if source == "upstream":
        return load_upstream(data_dir, cache_dir)
    return load_tfds(data_dir, download=tfds_download, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- splits


def _vinyals(halves: dict, data_dir, split_dir=None) -> dict:
    split_dir = pathlib.Path(split_dir) if split_dir else _find(pathlib.Path(data_dir), ["splits/vinyals"])
    if split_dir is None or not (split_dir / "train.txt").exists():
        raise DataError(f"vinyals split: no splits/vinyals/{{train,val,test}}.txt under {data_dir} (or its omniglot/)")
    everything = _merge(halves[BACKGROUND], halves[EVALUATION])
    by_alphabet_char = {n.split("/", 1)[1]: i for i, n in enumerate(everything.names)}
    result = {}
    for part in ("train", "val", "test"):
        lines = [line.strip() for line in (split_dir / f"{part}.txt").read_text().splitlines() if line.strip()]
        names, images = [], []
        for line in lines:
            character, rotation = line.rsplit("/", 1)
            if character not in by_alphabet_char or not re.fullmatch(r"rot\d{3}", rotation):
                raise DataError(f"vinyals split: {split_dir / (part + '.txt')} has unknown entry {line!r}")
            source_index = by_alphabet_char[character]
            names.append(f"{everything.names[source_index]}/{rotation}")
            # rot090 is a 90 degree counter-clockwise turn, as np.rot90.
            images.append(np.rot90(everything.images[source_index], k=int(rotation[3:]) // 90, axes=(1, 2)))
        result[part] = CharacterSet(tuple(names), np.ascontiguousarray(np.stack(images)))
    return result


def _random_characters(halves: dict) -> dict:
    """All 1,623 characters shuffled with RANDOM_SPLIT_SEED into VINYALS_SIZES parts, each
    character as 4 classes (rot000, rot090, rot180, rot270), like the vinyals files."""
    everything = _merge(halves[BACKGROUND], halves[EVALUATION])
    if len(everything) != sum(VINYALS_SIZES):
        raise DataError(f"random split: expected {sum(VINYALS_SIZES)} characters, the source has {len(everything)}")
    order = np.random.default_rng(RANDOM_SPLIT_SEED).permutation(len(everything))
    bounds = np.cumsum((0,) + VINYALS_SIZES)
    result = {}
    for part, start, stop in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
        chosen = sorted(order[start:stop])
        characters = CharacterSet(tuple(everything.names[i] for i in chosen), everything.images[chosen])
        result[part] = with_turns_and_flips(characters, flips=False)
    return result


def with_turns_and_flips(characters: CharacterSet, *, turns: bool = True, flips: bool = True) -> CharacterSet:
    """Adds rotated (90, 180, 270 degrees) and mirrored copies as new characters.

    A training augmentation (Edwards & Storkey 2017): up to 8x the characters,
    named `<name>/rotDDD[/flip]`.
    """
    names, images = [], []
    for k in range(4 if turns else 1):
        for flip in (False, True) if flips else (False,):
            turned = np.rot90(characters.images, k=k, axes=(2, 3))
            images.append(turned[..., ::-1] if flip else turned)
            names += [f"{n}/rot{90 * k:03d}" + ("/flip" if flip else "") for n in characters.names]
    return CharacterSet(tuple(names), np.ascontiguousarray(np.concatenate(images)))


def load_configured_splits(data_config, data_dir, seed: int) -> dict:
    """`load_splits` with the fields of a config's `data` section (configs/common.py)."""
    return load_splits(
        data_config.source,
        data_dir,
        split=data_config.split,
        num_val_characters=data_config.num_val_characters,
        seed=seed,
        tfds_download=data_config.tfds_download,
    )


def load_splits(
    source: str = "auto",
    data_dir=None,
    *,
    split: str = "lake",
    num_val_characters: int = 50,
    seed: int = 0,
    tfds_download: bool = False,
    cache_dir=None,
) -> dict:
    """Loads train / val / test CharacterSets.

    Args:
      source: one of SOURCES.
      data_dir: folder holding the source (and splits/vinyals for `vinyals`).
      split: `lake` (background vs evaluation alphabets), `vinyals` or `random`.
      num_val_characters: for `lake`, training characters held out for validation
        (chosen with `seed`); `vinyals` and `random` have their own validation part.
      seed: seed for the validation carve-out.

    Returns:
      {"train": CharacterSet, "val": CharacterSet, "test": CharacterSet}.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    halves = load_source(source, data_dir, tfds_download=tfds_download, cache_dir=cache_dir)
    if split == "vinyals":
        return _vinyals(halves, data_dir)
    if split == "random":
        return _random_characters(halves)
    background = halves[BACKGROUND]
    if not 0 <= num_val_characters < len(background):
        raise DataError(f"num_val_characters={num_val_characters} must be in [0, {len(background)})")
    order = np.random.default_rng(seed).permutation(len(background))
    val = sorted(order[:num_val_characters])
    train = sorted(order[num_val_characters:])
    return {
        "train": CharacterSet(tuple(background.names[i] for i in train), background.images[train]),
        "val": CharacterSet(tuple(background.names[i] for i in val), background.images[val]),
        "test": halves[EVALUATION],
    }
