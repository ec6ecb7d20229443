"""Generative Matching Network, conv variant (Bartunov & Vetrov 2018).

ResNet-style embedding 28 -> 13 -> 6 -> 3 and mirror generator; z of 50 dims;
controllers of 200 units; 1 attention step for the prior, 4 for recognition and
generation; episodes of T = 10 drawings of one character (C = 1); rotations and
mirror images of the training characters as extra classes.
Variants: default, quick, tiny. configs/gmn_fc.py and configs/gmn_c3.py build on it.
"""

from oneshot_tf.configs import common


def base_config(variant: str):
    """The conv GMN before `common.apply_variant` (other GMN configs edit it)."""
    config = common.get_config()
    config.model = "gmn"
    config.model_kwargs.architecture = "conv"
    config.model_kwargs.hidden_sizes = (32, 64, 128)
    config.model_kwargs.embedding_size = 256
    config.model_kwargs.latent_size = 50
    config.model_kwargs.controller_size = 200
    config.model_kwargs.key_size = 128
    config.model_kwargs.prior_steps = 1
    config.model_kwargs.recognition_steps = 4
    # attention, or mean (the paper's ablation: uniform weights over the support).
    config.model_kwargs.conditioning = "attention"
    config.data.batch_size = 32
    config.data.set_size = 10
    # Rotations and mirror images as new classes (8x the training characters): without
    # them the conv GMN overfitted (training loss 79 vs validation bound -106 nats).
    config.data.augment_turns = True
    config.data.augment_flips = True
    config.data.num_classes = 1
    config.train.steps = 200_000
    # Without warm-up, mixed_bfloat16 from seed 0 spiked at step ~120 and stalled at the
    # mean image (README "Results", GMN); with it, the same seed trained on.
    config.train.warmup_steps = 500
    config.train.eval_every = 1000
    # Slow steps: log (and check for signals) every 20.
    config.train.steps_per_loop = 20
    config.eval.batch_size = 10
    config.eval.chunk_size = 100
    if variant == "quick":
        config.model_kwargs.hidden_sizes = (16, 32, 32)
        config.model_kwargs.embedding_size = 64
        config.model_kwargs.controller_size = 64
        config.model_kwargs.key_size = 32
        config.model_kwargs.recognition_steps = 2
        config.data.batch_size = 16
        config.train.warmup_steps = 50
    elif variant == "tiny":
        config.train.warmup_steps = 0
        config.model_kwargs.hidden_sizes = (4, 4, 4)
        config.model_kwargs.embedding_size = 8
        config.model_kwargs.latent_size = 3
        config.model_kwargs.controller_size = 6
        config.model_kwargs.key_size = 5
        config.model_kwargs.recognition_steps = 2
    return config


def get_config(variant: str = "default"):
    return common.apply_variant(base_config(variant), variant, quick_steps=800)
