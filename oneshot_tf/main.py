"""Command line: flags -> config -> train / evaluate / sample / export / score.

  python -m oneshot_tf.main --model=NAME [--mode=train|eval|sample|export|all|score]
      [--workdir=DIR] [--data_dir=DIR] [--config=configs/NAME.py[:VARIANT]]
      [--config.KEY=VALUE ...]
  python -m oneshot_tf.main --model=NAME --pretrained --mode=sample [--support=a.png,b.png] [--out=x.png]
  python -m oneshot_tf.main --model=NAME [--pretrained] --mode=score --support=a.png,b.png --query=c.png
  python -m oneshot_tf.main --model=NAME --strategy=mirrored|multi_worker|tpu [--tpu=NAME] ...

`--model` alone loads configs/NAME.py unchanged; to change a field, name the file
with --config (and optionally a variant: default, quick, tiny). `--pretrained` uses
the model shipped in pretrained/NAME/ instead of a workdir's checkpoint.
`--strategy` trains under a tf.distribute strategy (oneshot_tf/distribute.py); the
modes after training run on one device, and under multi_worker on the chief alone.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Keep TF's start-up banner out of the log.

import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from oneshot_tf import cli, configs, distribute, errors, evaluate, export, models, precision, pretrained, train  # noqa: E402
from oneshot_tf import workdir as workdir_lib  # noqa: E402
from oneshot_tf.data import omniglot  # noqa: E402

MODES = ("train", "eval", "sample", "export", "all", "score")
PRETRAINED_MODES = ("sample", "score")

_MODEL = flags.DEFINE_enum("model", None, sorted(models.MODELS), "Model to run; picks configs/<model>.py.")
_MODE = flags.DEFINE_enum(
    "mode", "all", MODES, "train, eval, sample, export, all of them in that order, or score (--query given --support)."
)
_PRETRAINED = flags.DEFINE_bool(
    "pretrained", False, "Sample or score with the shipped pretrained/<model>, no training."
)
_SUPPORT = flags.DEFINE_list("support", [], "PNG drawings to condition on (dark ink on white, any size).")
_QUERY = flags.DEFINE_list("query", [], "PNG drawings to score with --mode=score.")
_OUT = flags.DEFINE_string("out", None, "Sample grid PNG of --mode=sample with --pretrained or --support.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/<model>. Running again resumes.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Folder with an Omniglot source; default $ONESHOT_TF_DATA_DIR or ../shared/data."
)
_STRATEGY = flags.DEFINE_string(
    "strategy", "default", f"tf.distribute strategy for training: {', '.join(distribute.STRATEGIES)}."
)
_TPU = flags.DEFINE_string("tpu", "", "With --strategy=tpu: the Cloud TPU's name, grpc://address, or 'local'.")
_CLUSTER_TIMEOUT = flags.DEFINE_float(
    "cluster_timeout_secs", 600.0, "With --strategy=multi_worker: the longest wait for the workers and each collective."
)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/iwae.py:quick.", lock_config=True)


def load_config(model: str, config=None):
    """The --config config, or configs/<model>.py's default; checks they agree."""
    if config is None:
        config = configs.get_config(model)
    if config.model != model:
        raise errors.ConfigError(f"--model={model} but the config is for {config.model!r}")
    export.check_weights_dtype(config.export.weights_dtype)  # Before a training, not after it.
    return config


def _support_rows(config, data_dir, support_pngs) -> "np.ndarray":
    """[rows, shots, 28, 28, 1]: the given drawings as one row, else test characters."""
    if support_pngs:
        return pretrained.read_pngs(support_pngs)[None]
    return evaluate.test_support(config, omniglot.load_configured_splits(config.data, data_dir, config.seed))


def draw(config, model, data_dir, out, support_pngs=()) -> pathlib.Path:
    """Writes a sample grid of `model` (rows: support | new drawings) to `out`."""
    support = _support_rows(config, data_dir, support_pngs)
    path = evaluate.write_png(out, evaluate.sample_grid(model, support, config.sample, config.sample.seed))
    logging.info(
        "Wrote %s (%d rows: %d support drawings | %d new)", path, *support.shape[:2], config.sample.samples_per_row
    )
    return path


def score(config, model, support_pngs, query_pngs) -> list:
    """log p(query | support) for every --query PNG, K = config.eval.num_samples; printed."""
    if not query_pngs:
        raise errors.ConfigError("--mode=score needs --query=PNG[,PNG...] (and --support=..., or none for 0 shots)")
    queries = pretrained.read_pngs(query_pngs)
    support = pretrained.read_pngs(support_pngs) if support_pngs else np.zeros([0, 28, 28, 1], np.float32)
    batch_support = np.repeat(support[None], len(queries), axis=0)
    seed = tf.constant([config.eval.seed, 0])
    nats = model.log_prob(batch_support, queries, config.eval.num_samples, seed).numpy()
    for path, value in zip(query_pngs, nats):
        bits = -value / (evaluate.NUM_PIXELS * math.log(2))
        print(
            f"log p({path} | {len(support)} shots) = {value:.2f} nats ({bits:.4f} bits/dim), K={config.eval.num_samples}"
        )
    return nats.tolist()


def run_pretrained(mode: str, config, workdir, data_dir):
    """--pretrained: sample or score with the shipped SavedModel of config.model."""
    if mode not in PRETRAINED_MODES:
        raise errors.ConfigError(
            f"--pretrained works with --mode={' or --mode='.join(PRETRAINED_MODES)}; the shipped model's "
            f"evaluation is {pretrained.ROOT / config.model / 'eval.json'}"
        )
    model = pretrained.load(config.model)
    logging.info("Using the shipped model %s", model.path)
    if mode == "sample":
        out = _OUT.value or pathlib.Path(workdir) / "samples" / "pretrained_samples.png"
        draw(config, model, data_dir, out, _SUPPORT.value)
    else:
        score(config, model, _SUPPORT.value, _QUERY.value)


def run_modes(mode: str, config, workdir, data_dir, strategy=None):
    """Runs `mode` (one of MODES but the pretrained ones) in `workdir`; training under
    `strategy` (default: the current one), the rest on one device, on the chief only."""
    strategy = strategy or tf.distribute.get_strategy()
    if mode in ("train", "all"):
        train.train_and_evaluate(config, workdir, data_dir, strategy)
    if mode == "train" or not distribute.is_chief(strategy):
        return
    # The modes after training share one restored model and one load of the data.
    restored = workdir_lib.restore_model(config, workdir)
    if mode == "score":
        score(config, restored.model, _SUPPORT.value, _QUERY.value)
        return
    if mode == "sample" and (_SUPPORT.value or _OUT.value):
        out = _OUT.value or pathlib.Path(workdir) / "samples" / f"samples_step{restored.step}_given.png"
        draw(config, restored.model, data_dir, out, _SUPPORT.value)
        return
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
    with cli.user_errors_exit():
        _main(argv)


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _MODEL.value is None:
        raise app.UsageError(f"--model is required; valid: {', '.join(sorted(models.MODELS))}")
    try:
        config = load_config(_MODEL.value, _CONFIG.value)
        data_dir = pathlib.Path(_DATA_DIR.value) if _DATA_DIR.value else omniglot.default_data_dir()
        workdir = pathlib.Path(_WORKDIR.value or pathlib.Path("runs") / _MODEL.value)
        logging.info("model %s, mode %s, workdir %s, data %s", config.model, _MODE.value, workdir, data_dir)
        # The strategy first: multi_worker and tpu must configure TF before its first op.
        strategy = distribute.make_strategy(
            _STRATEGY.value, tpu=_TPU.value, cluster_timeout_secs=_CLUSTER_TIMEOUT.value
        )
        precision.set_policy(config.precision)  # Once, before any model is built.
        if _PRETRAINED.value:
            run_pretrained(_MODE.value, config, workdir, data_dir)
            return
        if _MODE.value in ("train", "all") and pretrained.available(config.model):
            logging.info(
                "A trained %s ships with oneshot_tf: `python -m oneshot_tf.main --model=%s --pretrained "
                "--mode=sample` draws new characters now (how it was trained: %s)",
                config.model,
                config.model,
                pretrained.ROOT / config.model / "PROVENANCE.md",
            )
        try:
            run_modes(_MODE.value, config, workdir, data_dir, strategy)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as e:
            if _STRATEGY.value != "multi_worker":
                raise
            raise errors.ClusterError(
                f"lost a worker of the cluster ({e.message.splitlines()[0] if e.message else type(e).__name__}); "
                f"the last checkpoint is in {workdir / workdir_lib.CHECKPOINTS}: start every worker again to resume"
            ) from e
    except train.Interrupted as e:
        logging.warning("%s", e)
        sys.exit(128 + e.signum)


def run():
    """Console-script entry point (`oneshot-tf`)."""
    cli.run(main)


if __name__ == "__main__":
    run()
