"""Neural Statistician with SCHA-VAE's depth of z, and the recipe that trains it.

configs/statistician.py (the public implementation's Omniglot model) with three
stochastic layers of z of 32 dimensions, as in the Neural Statistician that SCHA-VAE's
code trains for its table (script/main_ns.sh omniglot: `--n-stochastic` 3, z of 32);
c stays 512. Trained from scratch: started from a one-layer model the extra layers
collapse to their priors (README "Three layers of z"). The recipe: rotations and
mirror images as new training characters, the weight average from step 0, the rate
held to step 17,500 and then a cosine to 0 at 24,000. Run as
--model=statistician --config=configs/statistician_deep.py[:quick].
Variants: default, quick, tiny.
"""

from oneshot_tf.configs import statistician


def get_config(variant: str = "default"):
    config = statistician.get_config(variant)
    config.model_kwargs.num_latent_layers = 3
    config.data.augment_turns = True
    config.data.augment_flips = True
    if variant == "default":
        config.model_kwargs.latent_size = 32
        config.train.steps = 24_000
        config.train.schedule = "cosine_tail"
        config.train.decay_start = 17_500
    return config
