"""The dtype policy choice: explicit names pass through, auto follows the hardware."""

import keras
import pytest

from oneshot_tf import errors, precision


def test_explicit_policies_pass_through():
    assert precision.resolve("float32") == "float32"
    assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
    with precision.policy_scope("mixed_bfloat16"):
        assert keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # Restored.


def test_bad_precision_names_the_choices():
    with pytest.raises(errors.ConfigError, match="unknown precision 'float16'; valid: auto, float32, mixed_bfloat16"):
        precision.resolve("float16")


def test_cpu_flags_parsed_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert {"avx512_bf16", "sse2"} <= precision.cpu_flags(str(cpuinfo))
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()
    assert precision.describe_cpu(str(cpuinfo)).startswith("Some CPU, ")
    assert precision.describe_cpu(str(cpuinfo)).endswith(" cores (avx512f, avx512_bf16)")


@pytest.mark.parametrize(
    "flags, expected", [({"avx512_bf16"}, "mixed_bfloat16"), ({"amx_bf16"}, "mixed_bfloat16"), ({"avx2"}, "float32")]
)
def test_auto_follows_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(precision.tf.config, "list_logical_devices", lambda kind=None: [])
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert precision.resolve("auto") == expected
