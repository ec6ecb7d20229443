"""Evaluation protocol (SPEC §3) and sample grids.

Per-shot conditional log-likelihood: for an episode x_1..x_T (default T = 10 drawers
of one test character, random order), position t is scored given x_<t,
    log p(x_t | x_<t) ~= log (1/K) sum_k p(x_t, z_k | x_<t) / q(z_k | x_t, x_<t),
with K samples from the model's recognition network (accumulated in chunks by a
running log-sum-exp, so K = 1000 or 5000 fits in memory). Reported per t: the mean
over episodes, its standard error, and bits/dim = -nats / (784 ln 2).

Joint log-likelihood of a set (models with `joint_set_scoring`): the first n items of
each episode scored together, log p(x_1..x_n) ~= log (1/K) sum_k p(X, latents_k) /
q(latents_k | X), a bound that tightens with K, reported per item beside the mean of
t = 1..n. For exact densities the two are equal (chain rule); the statistician's
per-shot column scores x_t under q(c | x_<t) in place of p(c | x_<t), so its mean is
not a bound on the joint and the two differ.
"""

import math
import pathlib
import time
import weakref

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from oneshot_tf import classify, errors, plots, provenance
from oneshot_tf import workdir as workdir_lib
from oneshot_tf.data import episodes, omniglot

NUM_PIXELS = omniglot.IMAGE_SIZE * omniglot.IMAGE_SIZE


def mean_bound(model, images: np.ndarray, seed: int, batch_size: int = 64) -> float:
    """Mean training bound per image over sets `images` [N, T, 28, 28, 1]."""
    total = 0.0
    for i in range(0, len(images), batch_size):
        batch = tf.constant(images[i : i + batch_size])
        total += float(tf.reduce_sum(model.elbo(batch, tf.constant([seed, i]), training=False)))
    return total / (images.shape[0] * images.shape[1])


def per_shot_log_probs(
    model,
    images: np.ndarray,
    *,
    num_samples: int,
    seed: int,
    batch_size: int = 50,
    chunk_size: int = 250,
    log_every_secs: float = 30.0,
) -> np.ndarray:
    """Importance-sampled log p(x_t | x_<t) for every episode and position.

    Args:
      model: a FewShotModel.
      images: float32 [episodes, T, 28, 28, 1].
      num_samples: K importance samples per estimate.
      seed: evaluation seed; results are a deterministic function of it.
      batch_size: episodes per call; chunk_size: importance samples per call.

    Returns:
      float64 [episodes, T], in nats.
    """
    return _importance_sampled(
        _chunk_logsumexp(model, "per_shot_log_weights"),
        images,
        num_samples=num_samples,
        seed=seed,
        batch_size=batch_size,
        chunk_size=chunk_size,
        log_every_secs=log_every_secs,
        what=f"episodes x {images.shape[1]} positions",
    )


def set_log_probs(model, sets: np.ndarray, **scoring) -> np.ndarray:
    """Importance-sampled joint log p(x_1..x_n) of every set, for models that declare
    `joint_set_scoring`.

    Args:
      sets: float32 [sets, n, 28, 28, 1].
      **scoring: num_samples, seed, batch_size (sets per call), chunk_size,
        log_every_secs, as for per_shot_log_probs.

    Returns:
      float64 [sets], in nats (the whole set's, not per item).
    """
    if not model.joint_set_scoring:
        raise errors.ConfigError(f"{type(model).__name__} does not score sets jointly")
    return _importance_sampled(
        _chunk_logsumexp(model, "set_log_weights"), sets, what=f"sets of {sets.shape[1]} jointly", **scoring
    )


def _importance_sampled(
    chunk_logsumexp, images, *, num_samples, seed, what, batch_size=50, chunk_size=250, log_every_secs=30.0
) -> np.ndarray:
    """log (1/K) sum_k w_k for every row of `images`, the K log-weights drawn in chunks
    (`chunk_logsumexp(batch, chunk, seed)` -> logsumexp of a chunk's) and combined by a
    running log-sum-exp, so K = 1000 or 5000 fits in memory. Logs progress every
    `log_every_secs`. Returns float64 with the chunk function's result shape per row."""
    if num_samples < 1:
        raise errors.ConfigError(f"num_samples must be >= 1, got {num_samples}")
    chunks = [min(chunk_size, num_samples - c) for c in range(0, num_samples, chunk_size)]
    results = []
    start = last_log = time.time()
    for b, i in enumerate(range(0, len(images), batch_size)):
        batch = tf.constant(images[i : i + batch_size])
        batch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0]), b)
        acc = None
        for c, chunk in enumerate(chunks):
            chunk_seed = tf.random.experimental.stateless_fold_in(batch_seed, c)
            scores = chunk_logsumexp(batch, chunk, chunk_seed)
            acc = scores if acc is None else tf.experimental.numpy.logaddexp(acc, scores)
        results.append(acc.numpy().astype(np.float64) - math.log(num_samples))
        done = i + len(batch)
        if time.time() - last_log > log_every_secs or done == len(images):
            elapsed = time.time() - start
            logging.info(
                "scored %d/%d %s, K=%d  %.1fs  ETA %.0fs",
                done,
                len(images),
                what,
                num_samples,
                elapsed,
                elapsed / done * (len(images) - done),
            )
            last_log = time.time()
    return np.concatenate(results)


def _configured_scoring(eval_config, num_samples=None, seed=None) -> dict:
    """The K, seed, batch and chunk sizes of an eval config (`num_samples` / `seed`
    override the config's), as keyword arguments of the scorers."""
    return {
        "num_samples": eval_config.num_samples if num_samples is None else num_samples,
        "seed": eval_config.seed if seed is None else seed,
        "batch_size": eval_config.batch_size,
        "chunk_size": eval_config.chunk_size,
    }


def configured_log_probs(model, eval_config, images: np.ndarray, *, num_samples=None, seed=None) -> np.ndarray:
    """per_shot_log_probs with the K, seed, batch and chunk sizes of an eval config
    (`num_samples` / `seed` override the config's); float64 [episodes, T]."""
    return per_shot_log_probs(model, images, **_configured_scoring(eval_config, num_samples, seed))


def joint_set_summary(model, eval_config, sets: np.ndarray, *, num_samples=None) -> dict:
    """set_log_probs of `sets` [sets, n, 28, 28, 1] with the eval config's K (or
    `num_samples`), seed, batch and chunk sizes, summarised per drawing:
    {"set_size": n, "num_samples": K, "log_prob_per_item", "stderr" (over sets), "seconds"}."""
    start = time.time()
    scoring = _configured_scoring(eval_config, num_samples)
    joint = set_log_probs(model, sets, **scoring)
    mean, stderr = _mean_and_stderr(joint / sets.shape[1])
    return {
        "set_size": sets.shape[1],
        "num_samples": scoring["num_samples"],
        "log_prob_per_item": round(mean, 4),
        "stderr": round(stderr, 4),
        "seconds": round(time.time() - start, 1),
    }


# One traced scorer per (model, method), so scoring again does not trace again.
_CHUNK_SCORERS = weakref.WeakKeyDictionary()


def _chunk_logsumexp(model, method: str):
    """tf.function (batch, K, seed) -> logsumexp over K of `model.<method>(batch, K, seed)`."""
    scorers = _CHUNK_SCORERS.setdefault(model, {})
    if method not in scorers:
        # A weak reference: the cached function must not keep its key (the model) alive.
        model_ref = weakref.ref(model)
        scorers[method] = tf.function(
            lambda batch, chunk, chunk_seed: tf.reduce_logsumexp(
                getattr(model_ref(), method)(batch, chunk, chunk_seed), axis=0
            )
        )
    return scorers[method]


def mean_of_first(log_probs: np.ndarray, num_positions: int = 5) -> dict:
    """Mean over episodes of the mean of positions 1..num_positions, with its standard
    error: by the chain rule the joint log-likelihood of a set of that size over its size
    (SPEC §3's set-level anchors)."""
    mean, stderr = _mean_and_stderr(log_probs[:, :num_positions].mean(axis=1))
    return {"positions": min(num_positions, log_probs.shape[1]), "log_prob": round(mean, 4), "stderr": round(stderr, 4)}


def _mean_and_stderr(values: np.ndarray) -> tuple:
    """Mean and standard error of the mean (NaN for a single value)."""
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), stderr


def summarize(log_probs: np.ndarray) -> list:
    """Per-position mean, standard error and bits/dim of log_probs [episodes, T]."""
    rows = []
    for t in range(log_probs.shape[1]):
        mean, stderr = _mean_and_stderr(log_probs[:, t])
        rows.append(
            {
                "t": t + 1,
                "shots": t,
                "log_prob": round(mean, 4),
                "stderr": round(stderr, 4),
                "bits_per_dim": round(-mean / (NUM_PIXELS * math.log(2)), 6),
            }
        )
    return rows


def estimator_note(model) -> str:
    notes = ["log (1/K) sum_k p(x_t, z_k | x_<t) / q(z_k | x_t, x_<t), z_k from the recognition network"]
    if not model.conditional:
        notes.append("the model is unconditional, so every t estimates log p(x_t)")
    if model.estimator_note:
        notes.append(model.estimator_note)
    return "; ".join(notes)


def eval_filename(c_test: int, with_replacement: bool = False) -> str:
    """eval.json for the headline protocol (C_test = 1, items without replacement);
    eval_c<N>.json and eval[_c<N>]_with_replacement.json for the variants."""
    return "eval" + (f"_c{c_test}" if c_test != 1 else "") + ("_with_replacement" if with_replacement else "") + ".json"


def protocol_episodes(eval_config, test_characters, num_episodes: int | None = None) -> np.ndarray:
    """The protocol's test episodes [episodes, set_size, 28, 28, 1] from the config's
    `eval` section: the same for every model and run with the same eval seed."""
    return episodes.fixed_episodes(
        test_characters,
        num_episodes=num_episodes or eval_config.episodes,
        set_size=eval_config.set_size,
        num_classes=eval_config.c_test,
        with_replacement=eval_config.with_replacement,
        seed=eval_config.seed,
    )["images"]


def evaluate(config, workdir, data_dir, *, restored=None, splits=None) -> dict:
    """Scores the config.eval.checkpoint checkpoint of `workdir` by the protocol; writes eval.json (eval_c<N>.json for C_test = N > 1).

    `restored` (from workdir.restore_model) and `splits` (from
    workdir.load_data) skip restoring and loading again when the caller has them.
    """
    workdir = pathlib.Path(workdir)
    if config.eval.joint_num_samples < 0:  # Found now, not after the per-shot table's hours.
        raise errors.ConfigError(
            f"eval.joint_num_samples must be >= 0 (0: num_samples), got {config.eval.joint_num_samples}"
        )
    restored = restored or workdir_lib.restore_model(config, workdir)
    model = restored.model
    splits = splits or omniglot.load_configured_splits(config.data, data_dir, config.seed)
    start = time.time()
    test_episodes = protocol_episodes(config.eval, splits["test"])
    log_probs = configured_log_probs(model, config.eval, test_episodes)
    result = {
        "model": config.model,
        "source": omniglot.resolve_source(config.data.source, data_dir),
        "split": config.data.split,
        "c_test": config.eval.c_test,
        "with_replacement": config.eval.with_replacement,
        "episodes": config.eval.episodes,
        "set_size": config.eval.set_size,
        "num_samples": config.eval.num_samples,
        "seed": config.eval.seed,
        **workdir_lib.restored_record(restored, workdir),
        "precision": keras.mixed_precision.global_policy().name,
        "code_commit": provenance.code_commit(),
        "estimator": estimator_note(model),
        "per_shot": summarize(log_probs),
        "mean_t1_to_5": mean_of_first(log_probs, 5),
        "seconds": round(time.time() - start, 1),
    }
    set_size = min(config.eval.joint_set_size, config.eval.set_size)
    if set_size and model.joint_set_scoring:
        result["joint_set"] = {
            **joint_set_summary(
                model, config.eval, test_episodes[:, :set_size], num_samples=config.eval.joint_num_samples or None
            ),
            "estimator": "log (1/K) sum_k p(X, latents_k) / q(latents_k | X), over the first items of each episode",
        }
    if config.eval.all_test_images:
        every_image = episodes.all_images(splits["test"])[:, None]
        start = time.time()
        image_log_probs = per_shot_log_probs(
            model,
            every_image,
            num_samples=config.eval.test_num_samples,
            seed=config.eval.seed,
            batch_size=config.eval.batch_size * config.eval.set_size,
            chunk_size=config.eval.chunk_size,
        )
        row = summarize(image_log_probs)[0]
        result["test_images"] = {
            "images": len(every_image),
            "num_samples": config.eval.test_num_samples,
            "log_prob": row["log_prob"],
            "stderr": row["stderr"],
            "bits_per_dim": row["bits_per_dim"],
            "seconds": round(time.time() - start, 1),
        }
    if config.eval.classification_queries and model.classification_rules:
        start = time.time()
        error_rates = classify.evaluate_classification(
            model,
            splits["test"],
            data_dir,
            episodes=config.eval.classification_queries,
            num_samples=config.eval.classification_num_samples,
            seed=config.eval.seed,
        )
        primary = f"lake_20way_1shot_{model.classification_rules[0]}_error"
        if primary in error_rates:
            error_rates["lake_20way_1shot_error"] = error_rates[primary]
        result["classification"] = {
            **error_rates,
            "num_samples": config.eval.classification_num_samples,
            "seconds": round(time.time() - start, 1),
        }
    output = workdir / eval_filename(config.eval.c_test, config.eval.with_replacement)
    workdir_lib.write_json(output, result)
    figure = plots.per_shot_figure(result, output.with_name(output.stem.replace("eval", "per_shot") + ".png"))
    with tf.summary.create_file_writer(str(workdir / "tensorboard" / "eval")).as_default():
        png = tf.io.decode_png(figure.read_bytes(), channels=3)
        tf.summary.image(f"per_shot_c{config.eval.c_test}", png[None], step=restored.step)
    for row in result["per_shot"]:
        logging.info(
            "t=%2d (%d shots): %.2f +- %.2f nats (%.4f bits/dim)",
            row["t"],
            row["shots"],
            row["log_prob"],
            row["stderr"],
            row["bits_per_dim"],
        )
    mean5 = result["mean_t1_to_5"]
    logging.info(
        "mean of t=1..5: %.2f +- %.2f nats (by the chain rule, log p of a set of 5, over 5)",
        mean5["log_prob"],
        mean5["stderr"],
    )
    if "joint_set" in result:
        joint = result["joint_set"]
        logging.info(
            "joint log p of sets of %d, over %d, K=%d: %.2f +- %.2f nats",
            joint["set_size"],
            joint["set_size"],
            joint["num_samples"],
            joint["log_prob_per_item"],
            joint["stderr"],
        )
    if "test_images" in result:
        logging.info(
            "all %d test images, K=%d: %.2f +- %.2f nats",
            *[result["test_images"][k] for k in ("images", "num_samples", "log_prob", "stderr")],
        )
    logging.info("Wrote %s and %s", output, figure)
    return result


def sample_grid(model, support: np.ndarray, sample_config, seed: int) -> np.ndarray:
    """A picture of conditional samples: each row is a support set, a gap, new drawings.

    Args:
      support: float32 [rows, shots, 28, 28, 1].
      sample_config: `samples_per_row`.
      seed: sampling seed.

    Returns:
      float32 [height, width] in [0, 1], dark ink on white; support and samples
      are separated by a grey bar. Samples are Bernoulli means.
    """
    rows, shots = support.shape[:2]
    count = sample_config.samples_per_row
    repeated = tf.repeat(tf.constant(support), count, axis=0)  # [rows * count, shots, ...]
    probs, _ = model.sample(repeated, tf.constant([seed, 1]))
    samples = tf.reshape(probs, [rows, count, 28, 28]).numpy()
    pad = 2
    cell = 28 + pad
    width = (shots + count) * cell + 3 * pad + pad
    grid = np.ones((rows * cell + pad, width), np.float32)
    for r in range(rows):
        y = pad + r * cell
        for s in range(shots):
            grid[y : y + 28, pad + s * cell : pad + s * cell + 28] = 1.0 - support[r, s, ..., 0]
        x0 = pad + shots * cell + 3 * pad
        grid[y - pad // 2 : y + 28 + pad // 2, x0 - 2 * pad : x0 - pad] = 0.5
        for s in range(count):
            grid[y : y + 28, x0 + s * cell : x0 + s * cell + 28] = 1.0 - samples[r, s]
    return grid


def test_support(config, splits) -> np.ndarray:
    """The sample grid's support sets: config.sample.rows test characters x
    config.sample.shots drawings, float32 [rows, shots, 28, 28, 1], fixed by its seed."""
    return episodes.fixed_episodes(
        splits["test"], num_episodes=config.sample.rows, set_size=config.sample.shots, seed=config.sample.seed
    )["images"]


def write_png(path, grid: np.ndarray) -> pathlib.Path:
    """Writes a [height, width] picture in [0, 1] as an 8-bit PNG, atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = tf.io.encode_png(tf.cast(tf.round(np.asarray(grid)[..., None] * 255), tf.uint8))
    partial = path.with_suffix(".partial")
    partial.write_bytes(png.numpy())
    partial.replace(path)
    return path


def write_samples(config, workdir, data_dir, *, restored=None, splits=None) -> pathlib.Path:
    """Writes samples/samples_step<step>.png (and to TensorBoard) from test characters.

    `restored` and `splits` as for `evaluate`.
    """
    workdir = pathlib.Path(workdir)
    model, step, *_ = restored or workdir_lib.restore_model(config, workdir)
    support = test_support(config, splits or omniglot.load_configured_splits(config.data, data_dir, config.seed))
    grid = sample_grid(model, support, config.sample, config.sample.seed)
    path = write_png(workdir / "samples" / f"samples_step{step}.png", grid)
    with tf.summary.create_file_writer(str(workdir / "tensorboard" / "eval")).as_default():
        tf.summary.image("test_samples", grid[None, ..., None], step=step)
    logging.info(
        "Wrote %s (%d rows: %d support images | %d samples)", path, *support.shape[:2], config.sample.samples_per_row
    )
    return path
