"""Scores the same test episodes with two SavedModels, same seeds: what an export choice costs.

  python tools/compare_exports.py --a=W/export/hfsgm/1 --b=W/export/hfsgm/2 \
      [--episodes=100 --num_samples=100 --shots=4]

For two exports of one model (e.g. float32 and float16 stored weights) the `log_prob`
signatures draw the same importance samples from the same seeds, so their difference
is the export choice's alone, not Monte Carlo noise. Prints, per position t = 1..shots+1,
the mean of b - a and the largest |b - a| over the episodes (nats), as one JSON line.
"""

import json

import numpy as np
from absl import flags

from oneshot_tf import cli, pretrained
from oneshot_tf.data import episodes, omniglot

_A = flags.DEFINE_string("a", None, "First SavedModel folder (or model base path: its newest).", required=True)
_B = flags.DEFINE_string("b", None, "Second SavedModel folder (or model base path).", required=True)
_EPISODES = flags.DEFINE_integer("episodes", 100, "Test episodes (lake split).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "Importance samples K.")
_SHOTS = flags.DEFINE_integer("shots", 4, "Scores positions t = 1..shots+1.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")


def main(argv):
    del argv
    splits = omniglot.load_splits(data_dir=_DATA_DIR.value or omniglot.default_data_dir(), split="lake")
    test = episodes.fixed_episodes(splits["test"], num_episodes=_EPISODES.value, set_size=_SHOTS.value + 1, seed=0)
    a, b = (
        pretrained.SavedModelAdapter(pretrained.saved_model_dir(path, flag)).per_shot_log_probs(
            test["images"], _NUM_SAMPLES.value, seed=0
        )
        for flag, path in (("--a", _A.value), ("--b", _B.value))
    )
    difference = b - a
    print(
        json.dumps(
            {
                "a": _A.value,
                "b": _B.value,
                "episodes": _EPISODES.value,
                "num_samples": _NUM_SAMPLES.value,
                "mean_a": np.round(a.mean(axis=0).astype(float), 3).tolist(),
                "mean_b_minus_a": np.round(difference.mean(axis=0).astype(float), 4).tolist(),
                "max_abs_b_minus_a": np.round(np.abs(difference).max(axis=0).astype(float), 4).tolist(),
            }
        )
    )


if __name__ == "__main__":
    cli.run(main)
