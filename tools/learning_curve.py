"""Plots a training run's learning curve from its TensorBoard events.

  python tools/learning_curve.py --workdir=runs/gmn [--out=runs/gmn/learning_curve.png]

Validation bound against step (with the training loss, negated, behind it) and
against wall time (time between runs does not count), and for a run with a weight
average (train.ema_decay) the trained weights' bound beside the average's; for a run
with train.val_tasks, their validation accuracy against step; prints the points as
JSON.
"""

import json
import pathlib

from absl import app, flags

from oneshot_tf import cli, plots

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (with tensorboard/train).", required=True)
_OUT = flags.DEFINE_string("out", None, "PNG to write; default <workdir>/learning_curve.png.")
_TITLE = flags.DEFINE_string("title", "", "Figure title.")


def main(argv):
    del argv
    curve = plots.read_curve(_WORKDIR.value)
    if not curve["step"]:
        raise app.UsageError(f"no validation points in {_WORKDIR.value}/tensorboard/train")
    out = pathlib.Path(_OUT.value or pathlib.Path(_WORKDIR.value) / "learning_curve.png")
    plots.learning_curve_figure(curve, out, _TITLE.value or str(_WORKDIR.value))
    trained = dict(zip(curve["trained_step"], curve["val_bound_trained"]))
    points = [
        {"step": s, "hours": round(h, 3), "val_bound": round(v, 3)}
        | ({"val_bound_trained_weights": round(trained[s], 3)} if s in trained else {})
        for s, h, v in zip(curve["step"], curve["hours"], curve["val_bound"])
    ]
    accuracy = {
        task: [{"step": s, "accuracy": round(v, 4)} for s, v in zip(series["step"], series["value"])]
        for task, series in curve["accuracy"].items()
    }
    print(json.dumps({"out": str(out), "validation": points} | ({"accuracy": accuracy} if accuracy else {}), indent=1))


if __name__ == "__main__":
    cli.run(main)
