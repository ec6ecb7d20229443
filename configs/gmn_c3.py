"""Generative Matching Network, conv, trained on episodes from up to C = 3 characters.

Run as --model=gmn --config=configs/gmn_c3.py[:quick]. Variants: default, quick, tiny.
"""

from oneshot_tf.configs import common, gmn


def get_config(variant: str = "default"):
    config = gmn.base_config(variant)
    # Items of an episode come from up to 3 characters (uniform class per item).
    config.data.num_classes = 3
    config.data.class_mix = "random"
    return common.apply_variant(config, variant, quick_steps=800)
