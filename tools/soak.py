"""Kills a training run with SIGKILL again and again and checks nothing was lost.

  python tools/soak.py [--kills=20 --steps=3000 --workdir=/tmp/oneshot_soak --seed=0]

Trains configs/vae.py:tiny (checkpoint after every inner loop of 5 steps) three ways,
with TF_DETERMINISTIC_OPS=1:
  1. uninterrupted, to --steps;
  2. the same command SIGKILLed --kills times (half at random moments, half the moment
     a checkpoint write is under way), rerun after each kill, then run to the end;
and compares the final weights bitwise and the step counts. Then kills an export while
it writes and checks that no half-written version is visible and that the next export
succeeds. Prints every kill point and the result as JSON; exits 1 on any difference.
"""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import flags

from oneshot_tf import cli

_KILLS = flags.DEFINE_integer("kills", 20, "SIGKILLs during training.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/oneshot_soak", "Scratch folder (emptied first).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the kill times.")
_TIMEOUT = 600  # Seconds any one process may run.


def _command(workdir, mode="train"):
    return [
        sys.executable, "-m", "oneshot_tf.main", "--model=vae", "--config=configs/vae.py:tiny",
        "--config.data.source=gmn28", "--config.precision=float32", f"--config.train.steps={_STEPS.value}",
        "--config.train.steps_per_loop=5", "--config.train.checkpoint_every_secs=0",
        "--config.train.eval_every=0", f"--mode={mode}", f"--workdir={workdir}",
    ]  # fmt: skip


def _env():
    return dict(os.environ, TF_DETERMINISTIC_OPS="1", TF_CPP_MIN_LOG_LEVEL="2")


def _start(workdir, mode="train"):
    repo = pathlib.Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        _command(workdir, mode), cwd=repo, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _latest_step(workdir) -> int | None:
    state = pathlib.Path(workdir, "checkpoints", "checkpoint")
    if not state.exists():
        return None
    line = state.read_text().splitlines()[0]
    return int(line.rsplit("-", 1)[1].rstrip('"'))


def _writing_checkpoint(workdir) -> bool:
    folder = pathlib.Path(workdir, "checkpoints")
    return folder.exists() and any("_temp" in p.name for p in folder.iterdir())


def _kill_when(process, ready, deadline_s: float) -> bool:
    """SIGKILLs `process` when ready() holds (polled every 2 ms); False if it ended first."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and process.poll() is None:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            return True
        time.sleep(0.002)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        return True
    return False


def _weights(workdir) -> list:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(tf.train.latest_checkpoint(str(pathlib.Path(workdir, "checkpoints")))))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model_variables"))
    return [(n, reader.get_tensor(n)) for n in names] + [("step", reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))]


def main(argv):
    del argv
    rng = random.Random(_SEED.value)
    root = pathlib.Path(_WORKDIR.value)
    shutil.rmtree(root, ignore_errors=True)
    reference, soaked = root / "reference", root / "soaked"
    start = time.time()
    done = subprocess.run(_command(reference), cwd=pathlib.Path(__file__).resolve().parents[1], env=_env(),
                          capture_output=True, text=True, timeout=_TIMEOUT)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"reference run failed:\n{done.stderr[-3000:]}")
    reference_seconds = time.time() - start
    # How long a run takes to reach its first step (imports, data, tracing): kills land
    # between half and one and a half of it after a launch.
    probe = _start(root / "probe")
    launched = time.time()
    _kill_when(probe, lambda: (_latest_step(root / "probe") or 0) > 0, _TIMEOUT)
    startup_seconds = time.time() - launched
    kills = []
    for k in range(_KILLS.value):
        if (_latest_step(soaked) or 0) >= _STEPS.value:
            break
        process = _start(soaked)
        launched = time.time()
        if k % 2:  # The moment a checkpoint write is under way.
            killed = _kill_when(process, lambda: _writing_checkpoint(soaked), 120)
            point = "during a checkpoint write"
        else:  # A random moment after start-up (TF import, data, tracing).
            wait = rng.uniform(0.5, 1.5) * startup_seconds
            killed = _kill_when(process, lambda w=wait, t0=launched: time.time() - t0 > w, 120)
            point = f"at {wait:.1f} s"
        kills.append({"kill": k + 1, "point": point, "killed": killed, "checkpoint_step_after": _latest_step(soaked)})
        print(json.dumps(kills[-1]), flush=True)
    final = _start(soaked)
    _, stderr = final.communicate(timeout=_TIMEOUT)
    if final.returncode:
        raise SystemExit(f"the final resumed run failed:\n{stderr.decode()[-3000:]}")
    ref, got = _weights(reference), _weights(soaked)
    differing = [n for (n, a), (_, b) in zip(ref, got) if a.shape != b.shape or not np.array_equal(a, b)]
    max_diff = max(
        float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf") for (_, a), (_, b) in zip(ref, got)
    )

    # An export killed while it writes leaves no visible version; the next one works.
    export_dir = soaked / "export" / "vae"
    process = _start(soaked, "export")
    export_killed = _kill_when(
        process, lambda: export_dir.exists() and any(p.name.startswith(".partial") for p in export_dir.iterdir()), 300
    )
    visible = sorted(p.name for p in export_dir.iterdir() if not p.name.startswith(".")) if export_dir.exists() else []
    complete = all((export_dir / v / "saved_model.pb").exists() for v in visible)
    again = subprocess.run(_command(soaked, "export"), cwd=pathlib.Path(__file__).resolve().parents[1], env=_env(),
                           capture_output=True, timeout=_TIMEOUT)  # fmt: skip
    result = {
        "reference_seconds": round(reference_seconds, 1),
        "startup_seconds": round(startup_seconds, 1),
        "kills": len(kills),
        "killed_during_checkpoint_write": sum(k["killed"] for k in kills if "write" in k["point"]),
        "steps": {"reference": int(ref[-1][1]), "soaked": int(got[-1][1])},
        "weights_bitwise_equal": not differing,
        "max_abs_difference": max_diff,
        "differing_variables": differing[:5],
        "export_killed_while_writing": export_killed,
        "visible_versions_after_kill": visible,
        "all_visible_versions_complete": complete,
        "next_export_ok": again.returncode == 0,
    }
    print(json.dumps(result, indent=2))
    ok = (
        not differing
        and result["steps"]["reference"] == result["steps"]["soaked"]
        and complete
        and again.returncode == 0
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    cli.run(main)
