"""Few-shot classification with a generative model (SPEC §3).

Rules:
  * `likelihood`: the class whose support set gives the query the highest
    importance-sampled log p(query | support) (any conditional model);
  * `kl`: the class whose context posterior q(c | D_i) is closest to the query's,
    argmin_i KL(q(c | D_i) || q(c | query)) (the Neural Statistician's rule; models
    that declare it have `context_posterior`).
A model lists its rules in `classification_rules`, the primary one first.
Tasks: Lake's 20 one-shot 20-way runs (error over 400 queries), random N-way
K-shot episodes on test characters, and 10-way MNIST transfer.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from oneshot_tf.data import few_shot, omniglot

RULES = ("likelihood", "kl")


def _diag_gaussian_kl(mean_p, std_p, mean_q, std_q) -> np.ndarray:
    """KL(p || q) for diagonal Gaussians, summed over the last axis."""
    return np.sum(np.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5, axis=-1)


def _context(model, sets: np.ndarray, batch_size: int = 256):
    """Means and stddevs of q(c | set) for sets [N, set_size, 28, 28, 1]."""
    means, stds = [], []
    for i in range(0, len(sets), batch_size):
        posterior = model.context_posterior(tf.constant(sets[i : i + batch_size]))
        means.append(posterior.mean().numpy())
        stds.append(posterior.stddev().numpy())
    return np.concatenate(means), np.concatenate(stds)


def context_information(model, sets: np.ndarray, *, active_threshold: float = 0.01) -> dict:
    """How much the context posteriors q(c | D) of `sets` [N, set_size, 28, 28, 1] say.

    Returns {"kl": mean over sets of KL(q(c | D) || N(0, I)) in nats (the prior of the
    context, or of its top layer), "max_dim_kl": the largest one dim's share of it,
    "active_dims": dims whose posterior mean varies over the sets by more than
    `active_threshold` (Burda et al.'s active units), "dims"}.
    """
    mean, std = _context(model, sets)
    mean, std = mean.reshape(len(sets), -1), std.reshape(len(sets), -1)
    kl_by_dim = np.mean(_diag_gaussian_kl(mean[..., None], std[..., None], 0.0, 1.0), axis=0)
    return {
        "kl": float(np.sum(kl_by_dim)),
        "max_dim_kl": float(np.max(kl_by_dim)),
        "active_dims": int(np.sum(np.var(mean, axis=0) > active_threshold)),
        "dims": mean.shape[1],
    }


def latent_information(model, sets: np.ndarray, *, seed: int = 0, batch_size: int = 100) -> list:
    """How much each layer of a model's item latents says about its drawing: the mean over
    the items of `sets` [N, set_size, 28, 28, 1] of `model.latent_kl_by_layer`, in nats,
    one float a layer."""
    by_layer = [
        model.latent_kl_by_layer(tf.constant(sets[i : i + batch_size]), tf.constant([seed, 1]))
        for i in range(0, len(sets), batch_size)
    ]
    return [float(kl) for kl in tf.reduce_mean(tf.concat(by_layer, 0), [0, 1])]


def scores(
    model,
    support: np.ndarray,
    queries: np.ndarray,
    rule: str,
    *,
    num_samples: int = 100,
    seed: int = 0,
    batch_size: int = 200,
) -> np.ndarray:
    """Score of every (query, class) pair; higher means more likely that class.

    Args:
      support: [E, ways, shots, 28, 28, 1].
      queries: [E, Q, 28, 28, 1].

    Returns:
      float [E, Q, ways].
    """
    num_episodes, ways, shots = support.shape[:3]
    num_queries = queries.shape[1]
    if rule == "kl":
        support_mean, support_std = _context(model, support.reshape(num_episodes * ways, shots, 28, 28, 1))
        query_mean, query_std = _context(model, queries.reshape(num_episodes * num_queries, 1, 28, 28, 1))
        shape_s = (num_episodes, 1, ways, -1)
        shape_q = (num_episodes, num_queries, 1, -1)
        return -_diag_gaussian_kl(
            support_mean.reshape(shape_s),
            support_std.reshape(shape_s),
            query_mean.reshape(shape_q),
            query_std.reshape(shape_q),
        )
    if rule != "likelihood":
        raise ValueError(f"unknown classification rule {rule!r}; valid: {', '.join(RULES)}")
    # Every (episode, query, class) triple as one row of a log_prob batch.
    pair_support = np.broadcast_to(support[:, None], (num_episodes, num_queries) + support.shape[1:]).reshape(
        -1, shots, 28, 28, 1
    )
    pair_query = np.broadcast_to(queries[:, :, None], (num_episodes, num_queries, ways, 28, 28, 1)).reshape(
        -1, 28, 28, 1
    )
    log_prob = tf.function(model.log_prob)
    results = [
        log_prob(
            tf.constant(pair_support[i : i + batch_size]),
            tf.constant(pair_query[i : i + batch_size]),
            num_samples,
            tf.constant([seed, i]),
        ).numpy()
        for i in range(0, len(pair_query), batch_size)
    ]
    return np.concatenate(results).reshape(num_episodes, num_queries, ways)


def error_rate(model, task: dict, rule: str, **kwargs) -> float:
    """Fraction of queries whose best-scoring class is wrong."""
    predicted = scores(model, task["support"], task["queries"], rule, **kwargs).argmax(axis=-1)
    return float(np.mean(predicted != task["labels"]))


def evaluate_classification(
    model, test_characters, data_dir, *, episodes: int = 400, num_samples: int = 100, seed: int = 0
) -> dict:
    """Every task for every rule the model declares: {"<task>_<rule>_error": rate}.

    Tasks whose files are missing or unreadable (Lake's runs, MNIST) are skipped with
    a warning; `results["skipped"]` maps each skipped task to the reason.
    """
    results, skipped = {}, {}
    rules = model.classification_rules
    if not rules:
        return results
    tasks = {}
    try:
        tasks["lake_20way_1shot"] = few_shot.load_lake_runs(data_dir)
    except omniglot.DataError as e:
        logging.warning("Skipping Lake's 20 one-shot runs: %s", e)
        skipped["lake_20way_1shot"] = str(e)
    for ways, shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
        tasks[f"random_{ways}way_{shots}shot"] = few_shot.random_episodes(
            test_characters, ways=ways, shots=shots, num_episodes=episodes // ways, seed=seed
        )
    try:
        mnist = few_shot.load_mnist(data_dir)
    except omniglot.DataError as e:
        logging.warning("Skipping the MNIST transfer tasks: %s", e)
        mnist = None
        skipped.update({f"mnist_10way_{shots}shot": str(e) for shots in (1, 5)})
    for shots in (1, 5) if mnist is not None else ():
        tasks[f"mnist_10way_{shots}shot"] = few_shot.random_episodes(
            mnist, ways=10, shots=shots, num_episodes=episodes // 10, seed=seed
        )
    for name, task in tasks.items():
        for rule in rules:
            results[f"{name}_{rule}_error"] = round(
                error_rate(model, task, rule, num_samples=num_samples, seed=seed), 4
            )
            logging.info(
                "%s, %s rule: error %.4f over %d queries",
                name,
                rule,
                results[f"{name}_{rule}_error"],
                task["labels"].size,
            )
    if skipped:
        results["skipped"] = skipped
    return results
