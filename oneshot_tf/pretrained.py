"""Models trained by the project and shipped in `pretrained/<model>/` (SPEC §6).

`pretrained/<model>/<version>/` is an exported SavedModel (TF Serving's layout, so the
folder is a model base path); beside it `eval.json`, a sample grid PNG, `config.json`
and `PROVENANCE.md` (steps, wall time, machine, command, commit). This module finds the
newest version and wraps its signatures so that `evaluate.sample_grid` and the
command line (`--pretrained`) use it like a restored model: no checkpoint, no training.
"""

import pathlib

import numpy as np
import tensorflow as tf

from oneshot_tf import errors

ROOT = pathlib.Path(__file__).resolve().parents[1] / "pretrained"


def saved_model_versions(base) -> list:
    """The versions, ascending, of the complete SavedModels in a model base path
    (TF Serving's layout: <base>/<integer version>/saved_model.pb)."""
    base = pathlib.Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())


def newest_version(base) -> pathlib.Path | None:
    """<base>/<newest complete version>/ of a model base path, or None if it has none."""
    versions = saved_model_versions(base)
    return pathlib.Path(base) / str(versions[-1]) if versions else None


def saved_model_dir(path, flag: str = "path") -> pathlib.Path:
    """The SavedModel folder of `path`: itself if it holds saved_model.pb, else the
    newest version of a model base path; ConfigError naming `flag` (the flag or config
    field the path came from) if neither."""
    path = pathlib.Path(path)
    if (path / "saved_model.pb").exists():
        return path
    newest = newest_version(path)
    if newest is None:
        raise errors.ConfigError(
            f"{flag}={str(path)!r} is neither a SavedModel folder nor a model base path "
            f"holding one (<path>/<version>/saved_model.pb)"
        )
    return newest


def model_dir(name: str, root=None) -> pathlib.Path:
    """pretrained/<name>/<newest version>/; ExportNotFoundError if none is shipped."""
    base = pathlib.Path(root or ROOT) / name
    newest = newest_version(base)
    if newest is None:
        shipped = {p.parent.parent.name for p in pathlib.Path(root or ROOT).glob("*/*/saved_model.pb")}
        raise errors.ExportNotFoundError(
            f"no shipped {name} model in {base} (shipped: {', '.join(sorted(shipped)) or 'none'}); "
            f"train one with --mode=train"
        )
    return newest


def available(name: str, root=None) -> bool:
    try:
        model_dir(name, root)
    except errors.ExportNotFoundError:
        return False
    return True


class SavedModelAdapter:
    """A loaded serving SavedModel with the `sample` / `log_prob` methods of FewShotModel."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self._loaded = tf.saved_model.load(str(self.path))
        self._sample = self._loaded.signatures["sample"]
        self._log_prob = self._loaded.signatures["log_prob"]

    def sample(self, support, seed) -> tuple:
        """(probs, images) [batch, 28, 28, 1] for support [batch, shots, 28, 28, 1]."""
        out = self._sample(support=tf.convert_to_tensor(support, tf.float32), seed=tf.cast(seed, tf.int32))
        return out["probs"], out["images"]

    def log_prob(self, support, query, num_samples: int, seed) -> tf.Tensor:
        """Importance-sampled log p(query | support) [batch], nats."""
        return self._log_prob(
            support=tf.convert_to_tensor(support, tf.float32),
            query=tf.convert_to_tensor(query, tf.float32),
            num_samples=tf.constant(num_samples, tf.int32),
            seed=tf.cast(seed, tf.int32),
        )["log_prob"]

    def per_shot_log_probs(self, episodes, num_samples: int, seed: int = 0) -> np.ndarray:
        """log p(x_t | x_<t) [n, T] for episodes [n, T, 28, 28, 1], t = 1..T, position t
        seeded [seed, t - 1]: two exports of one model scored with the same seed draw
        the same importance samples."""
        columns = [
            self.log_prob(episodes[:, :t], episodes[:, t], num_samples, tf.constant([seed, t])).numpy()
            for t in range(episodes.shape[1])
        ]
        return np.stack(columns, axis=1)


def load(name: str, root=None) -> SavedModelAdapter:
    return SavedModelAdapter(model_dir(name, root))


def read_pngs(paths) -> np.ndarray:
    """PNG files in Omniglot's polarity (dark ink on white, any size) -> float32
    [n, 28, 28, 1] binary, ink = 1.0: area-downsampled and thresholded at half ink,
    as the upstream source is."""
    from oneshot_tf.data import episodes, omniglot

    pngs = []
    for path in paths:
        try:
            pngs.append(pathlib.Path(path).read_bytes())
        except OSError as e:
            raise errors.ConfigError(f"cannot read support image {path}: {e}") from e
    try:
        ink = omniglot.decode_to_28(pngs)
    except tf.errors.InvalidArgumentError as e:
        raise errors.ConfigError(f"not a PNG among {', '.join(map(str, paths))}: {e.message.splitlines()[0]}") from e
    return episodes.fixed_binary(ink)[..., None]
