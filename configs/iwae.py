"""IWAE, k = 50, as Burda et al. (2016) trained it on Omniglot.

784-200-200-z1(100)-100-100-z2(50), tanh, mirrored decoder; batch 20; Adam
(eps 1e-4) with their schedule (stage i: lr 1e-3 * 10^(-i/7), 3^i units long,
scaled to `train.steps`).
Variants: default, quick, tiny.
"""

from oneshot_tf.configs import vae


def get_config(variant: str = "default"):
    config = vae.get_config(variant)
    with config.unlocked():
        config.model = "iwae"
        # Samples in the training bound (Burda et al.: k = 50).
        config.model_kwargs.num_samples = 5 if variant == "tiny" else 50
    return config
