"""Where a trained sequential model (seqgen) writes, and how much its latents carry.

  python tools/seqgen_windows.py --config=configs/seqgen.py --export=pretrained/seqgen
  python tools/seqgen_windows.py --config=configs/seqgen.py --workdir=runs/seqgen [--checkpoint=best]

Runs the model over test episodes (eagerly, one importance sample) and prints JSON: for
each shot t = 1..set_size, the bound's two terms, E_q log p(x_t | z, x_<t) and
KL(q || p) summed over the canvas steps; the KL by blocks of canvas steps; and the
write, target-read and support-read windows (scales s_x, s_y: the fraction of the
canvas's width a patch covers, and the spread of their shifts). A model whose write
windows stay near the whole canvas draws with patches upsampled by canvas / (scale *
patch side) and cannot place thin strokes; a read window wider than read_size pixels
samples the drawing on a grid coarser than its pixels (unless antialias_reads).
"""

import contextlib
import json

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags
from ml_collections import config_flags

from oneshot_tf import cli, models, pretrained, warm_start
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, omniglot
from oneshot_tf.models import layers

_CONFIG = config_flags.DEFINE_config_file("config", "configs/seqgen.py", "The model's config.")
_EXPORT = flags.DEFINE_string("export", None, "An export (model base path or version folder) to read weights from.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Or a training workdir to restore.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of --workdir.")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Data directory.")
_EPISODES = flags.DEFINE_integer("episodes", 40, "Test episodes.")
_BLOCKS = flags.DEFINE_integer("blocks", 8, "Blocks of canvas steps to sum the KL over.")
_SEED = flags.DEFINE_integer("seed", 0, "Episodes' and samples' seed.")


@contextlib.contextmanager
def _recorded(layer, outputs: list):
    """Appends every output of `layer` (called eagerly) to `outputs` while active."""
    call = layer.call

    def recording_call(*args, **kwargs):
        outputs.append(call(*args, **kwargs))
        return outputs[-1]

    layer.call = recording_call
    try:
        yield
    finally:
        del layer.call


def _model(config):
    if bool(_EXPORT.value) == bool(_WORKDIR.value):
        raise app.UsageError("give one of --export and --workdir")
    if _WORKDIR.value:
        return workdir_lib.restore_model(config, _WORKDIR.value, _CHECKPOINT.value).model
    model = models.build_model(config.model, **config.model_kwargs.to_dict())
    warm_start.initialise(model, pretrained.saved_model_dir(_EXPORT.value, "--export"), config.model_kwargs.to_dict())
    return model


def _window_summary(windows: list) -> dict:
    """Recorded [sequences, 4] windows of every step -> their scales and shifts' spread."""
    windows = np.stack([w.numpy() for w in windows])  # [steps, sequences, 4]
    scales = windows[..., :2]
    return {
        "scale": {key: round(float(f(scales)), 3) for key, f in (("mean", np.mean), ("min", np.min), ("max", np.max))},
        "shift_std": round(float(windows[..., 2:].std()), 3),
    }


def _by_shot(values, set_size: int) -> np.ndarray:
    """[episodes * set_size] per-sequence values -> [set_size] means over episodes."""
    return np.asarray(values).reshape(-1, set_size).mean(0)


def main(argv):
    del argv
    config = _CONFIG.value
    if config.model != "seqgen":
        raise app.UsageError(f"--config is a {config.model} config; this tool reads seqgen's windows")
    model = _model(config)
    splits = omniglot.load_configured_splits(config.data, _DATA_DIR.value, config.seed)
    test = episodes.fixed_episodes(
        splits["test"], num_episodes=_EPISODES.value, set_size=config.data.set_size, seed=_SEED.value
    )["images"]
    test = tf.constant(test)
    set_size = test.shape[1]
    targets, rows, slot_of, mask = model._sequences(test, test, layers.causal_mask(set_size), 1)
    windows = {"write": [], "target_read": [], "support_read": []}
    posteriors = []
    with (
        _recorded(model.write_params, windows["write"]),
        _recorded(model.target_read, windows["target_read"]),
        _recorded(model.support_read, windows["support_read"]),
        _recorded(model.posterior, posteriors),
    ):
        logits, negative_kl = model._run(targets, rows, slot_of, mask, tf.constant([_SEED.value, 1]), training_kl=True)
    likelihood = tfp.distributions.Independent(tfp.distributions.Bernoulli(logits=logits), 2).log_prob(targets)
    prior = layers.standard_normal(model.latent_size)
    kl_by_step = np.stack([tfp.distributions.kl_divergence(q, prior).numpy().mean() for q in posteriors])
    blocks = np.array_split(kl_by_step, min(_BLOCKS.value, len(kl_by_step)))
    print(
        json.dumps(
            {
                "episodes": _EPISODES.value,
                "per_shot": [
                    {"t": t + 1, "log_p_x_given_z": round(float(r), 2), "kl": round(float(k), 2)}
                    for t, (r, k) in enumerate(zip(_by_shot(likelihood, set_size), -_by_shot(negative_kl, set_size)))
                ],
                "kl_by_step_block": [round(float(b.sum()), 2) for b in blocks],
                "windows": {name: _window_summary(recorded) for name, recorded in windows.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    cli.run(main)
