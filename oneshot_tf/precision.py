"""The Keras dtype policy: float32, mixed_bfloat16, or `auto` (by the hardware).

Under `mixed_bfloat16` networks compute in bfloat16 with float32 variables; every
model keeps likelihoods, KL terms, importance weights and log-sum-exps in float32
(the layers that emit distribution parameters compute in float32:
models/layers.py OUTPUT_DTYPE).

`auto` picks mixed_bfloat16 where bfloat16 arithmetic is native and fast: a GPU of
compute capability 8.0 or newer (Ampere on), a TPU, or a CPU with AMX-BF16 or
AVX-512-BF16; float32 elsewhere (README "Speed" has the measured step ratios).

The policy is global Keras state: each entry point (oneshot_tf.main, the tools) sets
it once with `set_policy`; library code and tests use `policy_scope`.
"""

import contextlib
import os
import pathlib
import platform

import keras
import tensorflow as tf
from absl import logging

from oneshot_tf import errors

POLICIES = ("float32", "mixed_bfloat16")
CHOICES = ("auto",) + POLICIES
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


# The CPU flags that decide our speed; benchmark reports name them beside every number.
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo_field(name: str, cpuinfo: str) -> str | None:
    """The first `name : value` of /proc/cpuinfo, or None (no such file or field)."""
    try:
        text = pathlib.Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set:
    """The CPU feature flags Linux reports (empty where there is no /proc/cpuinfo)."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def describe_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """'<model name>, <n> cores (<AVX2 / AVX-512 / bfloat16 / AMX flags present>)'."""
    name = _cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown CPU"
    present = [f for f in _SPEED_FLAGS if f in cpu_flags(cpuinfo)]
    return f"{name}, {os.cpu_count()} cores ({', '.join(present) or 'none of ' + ', '.join(_SPEED_FLAGS)})"


def fast_bfloat16_device() -> str | None:
    """A description of the device with fast bfloat16 the run will use, or None."""
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return f"GPU {gpu.name} (compute capability {capability[0]}.{capability[1]})"
    if tf.config.list_logical_devices("TPU"):
        return "TPU"
    if not tf.config.list_physical_devices("GPU"):
        flags = cpu_flags() & set(_BF16_CPU_FLAGS)
        if flags:
            return f"CPU with {', '.join(sorted(flags))}"
    return None


def _choose(precision: str) -> tuple:
    """(policy, why): the policy for `precision` and, for auto, the device that decided it."""
    if precision not in CHOICES:
        raise errors.ConfigError(f"unknown precision {precision!r}; valid: {', '.join(CHOICES)}")
    if precision != "auto":
        return precision, None
    device = fast_bfloat16_device()
    if device:
        return "mixed_bfloat16", f"precision=auto: fast bfloat16 on {device}"
    return "float32", "precision=auto: no fast bfloat16 found"


def resolve(precision: str) -> str:
    """`auto` -> the policy for this machine; float32 / mixed_bfloat16 unchanged."""
    return _choose(precision)[0]


def set_policy(precision: str) -> str:
    """Sets the global Keras dtype policy (before any model is built); returns its name."""
    policy, why = _choose(precision)
    keras.mixed_precision.set_global_policy(policy)
    if why:
        logging.info("Keras dtype policy: %s (%s)", policy, why)
    else:
        logging.info("Keras dtype policy: %s", policy)
    return policy


@contextlib.contextmanager
def policy_scope(precision: str):
    """Sets the policy for `precision` inside the block and restores the previous one
    after it (for library users and tests that must not leave global state behind)."""
    previous = keras.mixed_precision.global_policy()
    set_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
