"""Command line: flags -> config -> train / evaluate / sample / export.

  python -m oneshot_tf.main --model=NAME [--mode=train|eval|sample|export|all]
      [--workdir=DIR] [--data_dir=DIR] [--config=configs/NAME.py[:VARIANT]]
      [--config.KEY=VALUE ...]

`--model` alone loads configs/NAME.py unchanged; to change a field, name the file
with --config (and optionally a variant: default, quick, tiny).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Keep TF's start-up banner out of the log.

import pathlib  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

from oneshot_tf import configs, errors, evaluate, export, models, precision, train  # noqa: E402
from oneshot_tf import workdir as workdir_lib  # noqa: E402
from oneshot_tf.data import omniglot  # noqa: E402

MODES = ("train", "eval", "sample", "export", "all")

_MODEL = flags.DEFINE_enum("model", None, sorted(models.MODELS), "Model to run; picks configs/<model>.py.")
_MODE = flags.DEFINE_enum("mode", "all", MODES, "train, eval, sample, export, or all of them in that order.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/<model>. Running again resumes.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Folder with an Omniglot source; default $ONESHOT_TF_DATA_DIR or ../shared/data."
)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/iwae.py:quick.", lock_config=True)


def load_config(model: str, config=None):
    """The --config config, or configs/<model>.py's default; checks they agree."""
    if config is None:
        config = configs.get_config(model)
    if config.model != model:
        raise errors.ConfigError(f"--model={model} but the config is for {config.model!r}")
    return config


def run_modes(mode: str, config, workdir, data_dir):
    if mode in ("train", "all"):
        train.train_and_evaluate(config, workdir, data_dir)
    if mode == "train":
        return
    # The modes after training share one restored model and one load of the data.
    restored = workdir_lib.restore_model(config, workdir)
    splits = (
        omniglot.load_configured_splits(config.data, data_dir, config.seed)
        if mode in ("eval", "sample", "all")
        else None
    )
    if mode in ("eval", "all"):
        evaluate.evaluate(config, workdir, data_dir, restored=restored, splits=splits)
    if mode in ("sample", "all"):
        evaluate.write_samples(config, workdir, data_dir, restored=restored, splits=splits)
    if mode in ("export", "all"):
        export.export(config, workdir, restored=restored)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _MODEL.value is None:
        raise app.UsageError(f"--model is required; valid: {', '.join(sorted(models.MODELS))}")
    try:
        config = load_config(_MODEL.value, _CONFIG.value)
        data_dir = pathlib.Path(_DATA_DIR.value) if _DATA_DIR.value else omniglot.default_data_dir()
        workdir = pathlib.Path(_WORKDIR.value or pathlib.Path("runs") / _MODEL.value)
        logging.info("model %s, mode %s, workdir %s, data %s", config.model, _MODE.value, workdir, data_dir)
        precision.set_policy(config.precision)  # Once, before any model is built.
        run_modes(_MODE.value, config, workdir, data_dir)
    except train.Interrupted as e:
        logging.warning("%s", e)
        sys.exit(128 + e.signum)
    except (errors.UserError, omniglot.DataError) as e:
        sys.exit(f"error: {e}")


def run():
    """Console-script entry point (`oneshot-tf`)."""
    app.run(main)


if __name__ == "__main__":
    run()
