"""Pictures of results: the per-shot table beside the published rows, learning curves.

Both draw with matplotlib (Agg backend, no display needed) into a PNG; the caller
decides where it goes (eval writes `per_shot.png` beside eval.json).
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from oneshot_tf import published  # noqa: E402


def per_shot_figure(result: dict, path) -> pathlib.Path:
    """log p(x_t | x_<t) against shots with standard-error bars, beside the published
    rows that share `result`'s C_test; `result` is an eval.json dict. Returns `path`."""
    rows = result["per_shot"]
    shots = np.array([row["shots"] for row in rows])
    means = np.array([row["log_prob"] for row in rows])
    errors = np.array([row["stderr"] for row in rows])
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    label = f"ours: {result['model']}, step {result['trained_steps']}, K={result['num_samples']}"
    ax.errorbar(shots, means, yerr=errors, fmt="o-", color="black", capsize=3, label=label, zorder=3)
    markers = iter("sDv^<>p")
    for name, row in published.PER_SHOT.get(result.get("c_test", 1), {}).items():
        ts = sorted(row)
        style = "--" if len(ts) > 1 else ""
        ax.plot([t - 1 for t in ts], [row[t] for t in ts], style, marker=next(markers), alpha=0.7, label=name)
    ax.set_xlabel("shots (t - 1 drawings of the character seen)")
    ax.set_ylabel("log p(x_t | x_<t), nats")
    ax.set_xticks(shots)
    ax.grid(alpha=0.3)
    title = f"Per-shot log-likelihood, C_test = {result.get('c_test', 1)}, {result['episodes']} test episodes"
    if result.get("with_replacement"):
        title += ",\nitems drawn with replacement"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def learning_curve_figure(curve: dict, path, title: str = "") -> pathlib.Path:
    """Validation bound against step and against wall time (two panels), and the
    validation few-shot accuracy against step (a third panel) when the run has it.

    Args:
      curve: {"step": [...], "hours": [...], "val_bound": [...]} and optionally
        {"train_step": [...], "train_loss": [...]} (loss in nats/image, plotted negated),
        {"trained_step": [...], "trained_hours": [...], "val_bound_trained": [...]}
        (a run with a weight average: `val_bound` is the average's, these the trained
        weights') and {"accuracy": {task: {"step": [...], "value": [...]}}} (fractions).
    """
    accuracy = curve.get("accuracy") or {}
    fig, axes = plt.subplots(1, 3 if accuracy else 2, figsize=(15 if accuracy else 10, 4), dpi=110)
    by_step, by_time = axes[:2]
    if accuracy:
        for task, series in accuracy.items():
            axes[2].plot(series["step"], 100 * np.asarray(series["value"]), "o-", ms=5, label=task)
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("validation accuracy, %")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8, loc="lower right")
    if curve.get("train_step"):
        by_step.plot(
            curve["train_step"], -np.asarray(curve["train_loss"]), color="0.7", lw=0.8, label="- training loss"
        )
    points = list(zip(curve["step"], curve["hours"], curve["val_bound"]))
    trained_at = dict(
        zip(curve.get("trained_step", []), zip(curve.get("trained_hours", []), curve.get("val_bound_trained", [])))
    )
    if trained_at:
        # Validation points without a trained-weights partner came before the average
        # started: they are the trained weights' too.
        series = [
            ("validation bound, weight average", "o-", "C0", [p for p in points if p[0] in trained_at]),
            (
                "validation bound, trained weights",
                "s--",
                "C1",
                sorted([p for p in points if p[0] not in trained_at] + [(s, *hv) for s, hv in trained_at.items()]),
            ),
        ]
    else:
        series = [("validation bound", "o-", "C0", points)]
    for label, style, color, chosen in series:
        steps, hours, bounds = zip(*chosen) if chosen else ((), (), ())
        by_step.plot(steps, bounds, style, color=color, ms=5, label=label)
        by_time.plot(hours, bounds, style, color=color, ms=5, label=label)
    for ax, xlabel in ((by_step, "step"), (by_time, "wall time, hours")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("nats / image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if curve["val_bound"]:
        low = min(curve["val_bound"])
        by_step.set_ylim(low - 5, max(curve["val_bound"]) + 5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def read_curve(workdir) -> dict:
    """The learning curve of a training workdir, from its TensorBoard events."""
    import tensorflow as tf

    points = {"val/bound": {}, "val/bound_trained_weights": {}, "train/loss": {}}
    for events in sorted(pathlib.Path(workdir, "tensorboard", "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag in points or _is_accuracy(value.tag):
                    series = points.setdefault(value.tag, {})
                    series[event.step] = (event.wall_time, float(tf.make_ndarray(value.tensor)))
    val = sorted(points["val/bound"].items())
    trained = sorted(points["val/bound_trained_weights"].items())
    train = sorted(points["train/loss"].items())
    # Wall time of a resumed run counts only time spent running, not the gaps between runs.
    walls = sorted(wall for series in points.values() for wall, _ in series.values())
    active, elapsed = {}, 0.0
    for previous, wall in zip([walls[0]] + walls[:-1] if walls else [], walls):
        gap = wall - previous
        elapsed += gap if gap < 600 else 0.0
        active[wall] = elapsed / 3600
    return {
        "step": [s for s, _ in val],
        "hours": [active[w] for _, (w, _) in val],
        "val_bound": [v for _, (_, v) in val],
        "train_step": [s for s, _ in train],
        "train_loss": [v for _, (_, v) in train],
        "trained_step": [s for s, _ in trained],
        "trained_hours": [active[w] for _, (w, _) in trained],
        "val_bound_trained": [v for _, (_, v) in trained],
        "accuracy": {
            tag.removeprefix("val/").removesuffix("_accuracy"): {
                "step": sorted(series),
                "value": [v for _, (_, v) in sorted(series.items())],
            }
            for tag, series in sorted(points.items())
            if _is_accuracy(tag)
        },
    }


def _is_accuracy(tag: str) -> bool:
    """A few-shot accuracy of train.val_tasks: val/<ways>way_<shots>shot_<rule>_accuracy."""
    return tag.startswith("val/") and tag.endswith("_accuracy")
