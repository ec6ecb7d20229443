"""SCHA-VAE (Giannone & Winther, ICML 2022): the hfsgm config with attention aggregation.

The public code's CTHFSGM (script/main_cthfsgm.sh omniglot_ns): CHFSGM whose context
recognition networks q(c_l | ...) pool the set by multi-head attention from the set's
mean instead of the mean itself (models/hfsgm.AttentivePool); everything else as
configs/hfsgm.py. Run as --model=hfsgm --config=configs/scha_vae.py[:quick].
Variants: default, quick, tiny.
"""

from oneshot_tf.configs import hfsgm


def get_config(variant: str = "default"):
    config = hfsgm.get_config(variant)
    config.model_kwargs.context_aggregation = "attention"
    return config
