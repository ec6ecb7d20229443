"""Few-shot accuracy and test bound of a workdir's checkpoint: a point on a learning curve.

  python tools/few_shot_accuracy.py --config=configs/statistician.py --workdir=RUN \
      [--checkpoint=latest] [--rules=kl] [--queries=1000] [--out=curve.jsonl]

The columns of the PyTorch reference's curve (../shared/bench/peer_ns_curve.jsonl), so
the two compare at equal steps: accuracy on random 5-way 1-shot, 20-way 1-shot and
5-way 5-shot tasks of the test (evaluation-alphabet) characters, each +- its standard
error, per classification rule; and the mean training bound per image on test and
validation sets of the training set size; for a model with context posteriors (the KL
rule's), how much they say about the test sets and their first drawings alone
(`classify.context_information`: KL to the prior in nats, the largest one dim's
share, active dims); for a model with layers of item latents (the statistician's z), the
nats each layer carries about its test drawing (`classify.latent_information`). Prints one JSON
line (appended to --out).
A run trained with train.ema_decay is scored with its weight average (the line's
`weights`); add --config.train.ema_decay=0 for the trained weights.
"""

import json
import math
import pathlib

import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from oneshot_tf import classify, cli, evaluate, train
from oneshot_tf import precision as precision_lib
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, few_shot, omniglot
from oneshot_tf.models import layers

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "latest", workdir_lib.CHECKPOINT_CHOICES, "Which checkpoint.")
_RULES = flags.DEFINE_list("rules", None, "Classification rules; default: the model's primary rule.")
_QUERIES = flags.DEFINE_integer("queries", 1000, "Queries per task.")
_SETS = flags.DEFINE_integer("sets", 1000, "Test and validation sets for the bound.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_OUT = flags.DEFINE_string("out", None, "JSON-lines file to append the result to.")
_RECALIBRATE = flags.DEFINE_integer(
    "recalibrate_batch_norm",
    0,
    "Before scoring, replace the batch-norm moving statistics by their plain mean over this many "
    "training batches (in training mode, weights fixed): shows what lagging moving averages cost.",
)

TASKS = ((5, 1), (20, 1), (5, 5))


def _recalibrate_batch_norm(model, config, characters, num_batches: int):
    """Sets every layers.BatchNorm's moving statistics to their mean over `num_batches`
    training batches, computed in training mode (the weights do not change)."""
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, layers.BatchNorm)]
    sums = None
    _, dataset = train.training_data(config, characters)
    for index, batch in enumerate(dataset.take(num_batches)):
        for norm in norms:
            norm.moving_mean.assign(tf.zeros_like(norm.moving_mean))
            norm.moving_variance.assign(tf.zeros_like(norm.moving_variance))
        model.elbo(batch["images"], tf.constant([config.seed, index]), training=True)
        # With zeroed statistics one update leaves (1 - momentum) x the batch's.
        current = [(n.moving_mean.numpy(), n.moving_variance.numpy()) for n in norms]
        sums = current if sums is None else [(a + c, b + d) for (a, b), (c, d) in zip(sums, current)]
    for norm, (mean, variance) in zip(norms, sums):
        scale = num_batches * (1.0 - norm.momentum)
        norm.moving_mean.assign(mean / scale)
        norm.moving_variance.assign(variance / scale)
    logging.info("re-estimated %d batch norms from %d training batches", len(norms), num_batches)


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    most_ways = max(ways for ways, _ in TASKS)
    if _QUERIES.value < most_ways:
        raise app.UsageError(f"--queries={_QUERIES.value}: a {most_ways}-way task needs at least {most_ways}")
    precision_lib.set_policy(config.precision)
    data_dir = _DATA_DIR.value or omniglot.default_data_dir()
    splits = omniglot.load_configured_splits(config.data, data_dir, config.seed)
    restored = workdir_lib.restore_model(config, _WORKDIR.value, _CHECKPOINT.value)
    model = restored.model
    rules = _RULES.value or model.classification_rules[:1]
    result = {
        "step": restored.step,
        "checkpoint": restored.checkpoint,
        "weights": restored.weights,
        "queries_per_task": _QUERIES.value,
    }
    if _RECALIBRATE.value:
        _recalibrate_batch_norm(model, config, splits["train"], _RECALIBRATE.value)
        result["recalibrated_batch_norm_batches"] = _RECALIBRATE.value
    for name in ("test", "val"):
        sets = episodes.fixed_episodes(
            splits[name], num_episodes=_SETS.value, set_size=config.data.set_size, seed=config.eval.seed
        )["images"]
        result[f"{name}_bound"] = round(evaluate.mean_bound(model, sets, seed=config.eval.seed), 3)
        if name == "test" and "kl" in model.classification_rules:
            for size in (1, sets.shape[1]):
                information = classify.context_information(model, sets[:, :size])
                result[f"test_context_kl_set{size}"] = round(information["kl"], 3)
                result[f"test_context_max_dim_kl_set{size}"] = round(information["max_dim_kl"], 3)
                result[f"test_context_active_dims_set{size}"] = information["active_dims"]
            result["context_dims"] = information["dims"]
        if name == "test" and hasattr(model, "latent_kl_by_layer"):
            by_layer = classify.latent_information(model, sets, seed=config.eval.seed)
            result["test_item_latent_kl_by_layer"] = [round(kl, 3) for kl in by_layer]
    for ways, shots in TASKS:
        task = few_shot.random_episodes(
            splits["test"], ways=ways, shots=shots, num_episodes=_QUERIES.value // ways, seed=config.eval.seed
        )
        for rule in rules:
            error = classify.error_rate(
                model, task, rule, num_samples=config.eval.classification_num_samples, seed=config.eval.seed
            )
            queries = task["labels"].size
            key = f"{ways}way_{shots}shot_{rule}"
            result[f"{key}_accuracy"] = round(1 - error, 4)
            result[f"{key}_stderr"] = round(math.sqrt(error * (1 - error) / queries), 4)
            logging.info("%s: accuracy %.4f over %d queries", key, 1 - error, queries)
    line = json.dumps(result)
    print(line)
    if _OUT.value:
        with pathlib.Path(_OUT.value).open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    cli.run(main)
