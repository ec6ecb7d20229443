"""Joint log-likelihood of test sets against the number of importance samples K.

  python tools/set_log_likelihood.py --config=configs/statistician.py --workdir=RUN \
      [--checkpoint=best] [--num_samples=1,10,100,1000] [--sets=200] [--set_size=5] [--out=k.jsonl]

For a model that scores sets jointly (`joint_set_scoring`): log p(x_1..x_n) / n of the
first n drawings of the protocol's test episodes (the same sets as eval.json's
`joint_set`), importance-sampled over all the set's latents, for each K on the same sets.
The estimate is a lower bound that tightens as K grows; the table shows how far the
K = 100 of a quick evaluation sits from K = 1000. Prints one JSON line per K (appended to
--out).
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from oneshot_tf import cli, evaluate
from oneshot_tf import precision as precision_lib
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import omniglot

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", workdir_lib.CHECKPOINT_CHOICES, "Which checkpoint.")
_NUM_SAMPLES = flags.DEFINE_list("num_samples", ["1", "10", "100", "1000"], "Values of K.")
_SETS = flags.DEFINE_integer("sets", 200, "Test sets: the first episodes of the protocol's.")
_SET_SIZE = flags.DEFINE_integer("set_size", 5, "Drawings per set: the first of each episode.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_OUT = flags.DEFINE_string("out", None, "JSON-lines file to append the results to.")


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    if not 1 <= _SET_SIZE.value <= config.eval.set_size:
        raise app.UsageError(f"--set_size must be in [1, {config.eval.set_size}] (the episodes' size)")
    precision_lib.set_policy(config.precision)
    data_dir = _DATA_DIR.value or omniglot.default_data_dir()
    splits = omniglot.load_configured_splits(config.data, data_dir, config.seed)
    restored = workdir_lib.restore_model(config, _WORKDIR.value, _CHECKPOINT.value)
    if not restored.model.joint_set_scoring:
        raise app.UsageError(f"{config.model} does not score sets jointly; its per-shot table's mean is the joint")
    sets = evaluate.protocol_episodes(config.eval, splits["test"])[: _SETS.value, : _SET_SIZE.value]
    for num_samples in [int(k) for k in _NUM_SAMPLES.value]:
        summary = evaluate.joint_set_summary(restored.model, config.eval, sets, num_samples=num_samples)
        line = {
            "step": restored.step,
            "weights": restored.weights,
            "sets": len(sets),
            "num_samples": num_samples,
            **summary,
        }
        print(json.dumps(line), flush=True)
        logging.info("K=%d: %.2f +- %.2f nats per item", num_samples, summary["log_prob_per_item"], summary["stderr"])
        if _OUT.value:
            with open(_OUT.value, "a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    cli.run(main)
