"""VAE: the single-sample ELBO baseline (Kingma & Welling 2014).

Variants: default (MLPs, Burda et al.'s two stochastic layers, K = 1), quick, tiny.
"""

from oneshot_tf.configs import common


def get_config(variant: str = "default"):
    config = common.get_config()
    config.model = "vae"
    config.model_kwargs.hidden_sizes = (200, 200)
    config.model_kwargs.latent_sizes = (100, 50)
    config.model_kwargs.upper_hidden_sizes = (100, 100)
    config.model_kwargs.activation = "tanh"
    # Samples in the training bound: 1 is the ELBO.
    config.model_kwargs.num_samples = 1
    config.data.batch_size = 20
    config.train.adam_epsilon = 1e-4
    # About 3280 epochs of the 914 training characters x 20 drawers, as Burda et al.
    config.train.steps = 3_000_000
    config.train.schedule = "burda"
    if variant == "tiny":
        config.model_kwargs.hidden_sizes = (8,)
        config.model_kwargs.latent_sizes = (2, 2)
        config.model_kwargs.upper_hidden_sizes = (4,)
    return common.apply_variant(config, variant)
