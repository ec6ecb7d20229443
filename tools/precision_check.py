"""Does mixed_bfloat16 lose anything that matters? Same seeds, same steps, both policies.

  python tools/precision_check.py --config=configs/gmn.py --steps=1000 --seeds=1,2 \
      --workdir=/tmp/precision_check [--config.eval.episodes=1000 --config.eval.num_samples=100]

For each seed, trains the config for --steps under float32 and under mixed_bfloat16
(the trainer and data stream are identical; only the dtype policy differs), then scores
every model with the per-shot protocol on the same episodes and importance-sampling
seed (each in its own policy, as a user would run it).

One seed cannot separate precision from chance: the two policies' trajectories part
after the first rounding difference, as two seeds' do. So, per t, it prints the
difference bfloat16 - float32 averaged over the seeds with two standard errors: over
the test episodes (paired within a seed; the scoring's noise only) and over the seeds
(the spread of the per-seed differences; training's noise too, the honest one with
two or more seeds), each seed's difference, and the float32 seed-to-seed spread as the
scale of chance. The criterion (issue 13): the mean difference within --tolerance
nats at every t. JSON with every table goes to
<workdir>/precision_check.json. Training resumes in <workdir>/seed<N>/<policy>/.
"""

import json
import math
import pathlib

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from oneshot_tf import cli, evaluate, precision, train
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import omniglot

POLICIES = ("float32", "mixed_bfloat16")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file[:variant].")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps for each policy and seed.")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2"], "Training seeds (config.seed); two or more show chance.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/precision_check", "Holds seed<N>/<policy>/ workdirs.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder; default $ONESHOT_TF_DATA_DIR or ../shared/data.")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.5, "Largest acceptable |mean difference| in nats at any t.")


def compare(log_probs: dict) -> list:
    """Per-t statistics of bfloat16 against float32.

    Args:
      log_probs: {seed: {policy: float [episodes, T]}}, the same episodes everywhere.

    Returns:
      One dict per t: each policy's mean over seeds and episodes, the mean difference
      (bfloat16 - float32) with its standard error over episodes (paired by episode
      within a seed; the seeds' means averaged, their variances added / seeds**2) and
      over seeds (std of the per-seed differences / sqrt(seeds); NaN for one seed),
      each seed's difference, and the float32 seed-to-seed spread (largest minus
      smallest seed mean).
    """
    seeds = sorted(log_probs)
    num_positions = next(iter(log_probs.values()))["float32"].shape[1]
    rows = []
    for t in range(num_positions):
        differences, variances = [], []
        for seed in seeds:
            paired = log_probs[seed]["mixed_bfloat16"][:, t] - log_probs[seed]["float32"][:, t]
            differences.append(float(paired.mean()))
            variances.append(float(paired.var(ddof=1) / len(paired)) if len(paired) > 1 else math.nan)
        float32_means = [float(log_probs[s]["float32"][:, t].mean()) for s in seeds]
        rows.append(
            {
                "t": t + 1,
                **{p: float(np.mean([log_probs[s][p][:, t].mean() for s in seeds])) for p in POLICIES},
                "difference": float(np.mean(differences)),
                "difference_stderr": math.sqrt(sum(variances)) / len(seeds),
                "difference_stderr_seeds": (
                    float(np.std(differences, ddof=1) / math.sqrt(len(seeds))) if len(seeds) > 1 else math.nan
                ),
                "difference_by_seed": dict(zip(seeds, differences)),
                "float32_seed_spread": max(float32_means) - min(float32_means),
            }
        )
    return rows


def _train_and_score(config, seed: int, policy: str, data_dir, test_images: np.ndarray) -> np.ndarray:
    run = config.copy_and_resolve_references()
    with run.unlocked():
        run.seed = seed
        run.precision = policy
        run.train.steps = _STEPS.value
        run.train.eval_every = _STEPS.value
    workdir = pathlib.Path(_WORKDIR.value) / f"seed{seed}" / policy
    logging.info("seed %d, %s: training %s for %d steps in %s", seed, policy, run.model, _STEPS.value, workdir)
    with precision.policy_scope(policy):
        train.train_and_evaluate(run, workdir, data_dir)
        model = workdir_lib.restore_model(run, workdir, "latest").model
        return evaluate.configured_log_probs(model, run.eval, test_images)


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/gmn.py")
    seeds = [int(s) for s in _SEEDS.value]
    data_dir = _DATA_DIR.value or omniglot.default_data_dir()
    # The test characters do not depend on the training seed: score every model on one set.
    splits = omniglot.load_configured_splits(config.data, data_dir, config.seed)
    test = evaluate.protocol_episodes(config.eval, splits["test"])
    log_probs = {s: {p: _train_and_score(config, s, p, data_dir, test) for p in POLICIES} for s in seeds}
    rows = compare(log_probs)
    worst = max(abs(row["difference"]) for row in rows)
    report = {
        "model": config.model,
        "steps": _STEPS.value,
        "seeds": seeds,
        "episodes": config.eval.episodes,
        "num_samples": config.eval.num_samples,
        "rows": rows,
        "tables": {
            str(s): {p: evaluate.summarize(lp) for p, lp in by_policy.items()} for s, by_policy in log_probs.items()
        },
        "max_abs_difference": worst,
        "tolerance": _TOLERANCE.value,
        "within_tolerance": worst <= _TOLERANCE.value,
    }
    out = pathlib.Path(_WORKDIR.value) / "precision_check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    by_seed = " ".join(f"{'seed ' + str(s):>8}" for s in seeds)
    print(f"{len(seeds)} seeds, {_STEPS.value} steps, {config.eval.episodes} episodes, K = {config.eval.num_samples}")
    print(f"{'t':>3} {'float32':>9} {'bf16':>9} {'diff':>7} {'+-eps':>6} {'+-seeds':>7} {by_seed} {'f32 seeds':>9}")
    for row in rows:
        seeds_text = " ".join(f"{row['difference_by_seed'][s]:8.2f}" for s in seeds)
        print(
            f"{row['t']:3d} {row['float32']:9.2f} {row['mixed_bfloat16']:9.2f} {row['difference']:7.2f} "
            f"{row['difference_stderr']:6.2f} {row['difference_stderr_seeds']:7.2f} {seeds_text} "
            f"{row['float32_seed_spread']:9.2f}"
        )
    print(
        f"max |mean difference| {worst:.2f} nats; tolerance {_TOLERANCE.value}; "
        f"{'PASS' if worst <= _TOLERANCE.value else 'FAIL'}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
