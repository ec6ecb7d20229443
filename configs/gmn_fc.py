"""Generative Matching Network, FC variant: MLP embedding and generator.

Run as --model=gmn --config=configs/gmn_fc.py[:quick]. Variants: default, quick, tiny.
"""

from oneshot_tf.configs import common, gmn


def get_config(variant: str = "default"):
    config = gmn.base_config(variant)
    config.model_kwargs.architecture = "fc"
    config.model_kwargs.hidden_sizes = {"default": (500, 500), "quick": (128, 128), "tiny": (8,)}.get(
        variant, (500, 500)
    )
    return common.apply_variant(config, variant, quick_steps=800)
