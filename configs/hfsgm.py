"""Hierarchical few-shot generative model, convolutional latents (Giannone & Winther 2021).

Architecture as the public implementation's CHFSGM for Omniglot sets
(georgosgeorgos/hierarchical-few-shot-generative-models, script/main_chfsgm.sh
omniglot_ns): the Neural Statistician's 9-conv encoder and up-conv decoder, 3 layers
of context and item latents, each a 4 x 4 x 32 map, latent networks of 128 channels
with residual blocks of 3 convs, batch-norm momentum 0.1 in PyTorch's terms. Data,
training and evaluation are the statistician's config (sets of 5, batch 32 where the
public script has 100, Adam 1e-3, the likelihood weighting, clipping and weight
average), plus rotations and flips as new characters, as the public code augments.
Variants: default, quick, tiny.
"""

import ml_collections
from oneshot_tf.configs import statistician


def get_config(variant: str = "default"):
    config = statistician.get_config(variant)
    config.model = "hfsgm"
    small = variant == "quick"
    if variant in ("quick", "tiny"):
        kwargs = dict(
            encoder_channels=(16, 32, 64) if small else (4, 4, 4),
            convs_per_stage=1,
            decoder_channels=(64, 32, 16) if small else (4, 4, 4),
            decoder_convs_per_stage=1,
            hidden_size=32 if small else 8,
            context_channels=8 if small else 2,
            latent_channels=8 if small else 2,
            num_layers=3 if small else 2,
            residual_layers=2 if small else 1,
        )
    else:
        kwargs = dict(
            encoder_channels=(64, 128, 256),
            # 3x3 convs per encoder stage (the last one strided): 28 -> 14 -> 7 -> 4.
            convs_per_stage=3,
            decoder_channels=(256, 128, 64),
            decoder_convs_per_stage=2,
            hidden_size=128,
            context_channels=32,
            latent_channels=32,
            num_layers=3,
            residual_layers=3,
        )
    # context_aggregation: "mean" (CHFSGM); configs/scha_vae.py sets "attention".
    config.model_kwargs = ml_collections.ConfigDict(dict(kwargs, batch_norm_momentum=0.9, context_aggregation="mean"))
    # Without augmentation the statistician overfits the 964 background characters
    # (README); the public code trains on rotated and flipped sets.
    config.data.augment_turns = True
    config.data.augment_flips = True
    return config
