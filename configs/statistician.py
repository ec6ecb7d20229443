"""Neural Statistician, Omniglot model (Edwards & Storkey 2017).

Architecture as the public PyTorch implementation's: 9 conv encoder, c of 512, one
layer of z with 16 dims, up-conv decoder, its batch-norm placement, Gaussian heads and
initialisation; sets of 5 drawings of one character, batch 32 sets, Adam 1e-3; and its
training details: the log-likelihood weighted by w = 1 + 0.5 ** (step // 300) and the
KL by 1 / w, gradients clamped element-wise to [-0.5, 0.5], batch-norm moving averages
with PyTorch's momentum (0.9 in Keras' terms). With all of these it matches the
reference's learning curve at 2,000 steps (README "Results"). Validation, evaluation
and export use a moving average of the weights (train.ema_decay).
Variants: default, quick, tiny.
"""

from oneshot_tf.configs import common


def get_config(variant: str = "default"):
    config = common.get_config()
    config.model = "statistician"
    config.model_kwargs.encoder_channels = (64, 128, 256)
    # 3x3 convs per encoder stage (the last one strided): 28 -> 14 -> 7 -> 4.
    config.model_kwargs.convs_per_stage = 3
    config.model_kwargs.decoder_channels = (256, 128, 64)
    config.model_kwargs.decoder_convs_per_stage = 2
    config.model_kwargs.hidden_size = 256
    config.model_kwargs.context_size = 512
    config.model_kwargs.latent_size = 16
    config.model_kwargs.num_latent_layers = 1
    config.model_kwargs.residual_layers = 3
    # normalized_log_variance (the public implementation's Gaussian heads) | softplus.
    config.model_kwargs.gaussian_head = "normalized_log_variance"
    # Of the batch norms' moving averages: PyTorch's default, as in the public code.
    config.model_kwargs.batch_norm_momentum = 0.9
    # xavier_normal_relu_gain (the public implementation) | glorot_uniform (Keras).
    config.model_kwargs.kernel_initializer = "xavier_normal_relu_gain"
    # Batch norm before the ELU of the z networks' and the decoder's summed inputs and
    # after the decoder's dense stem (True); False is the public implementation's layout,
    # without which the KL-rule accuracy trailed the reference's by 6-8 points.
    config.model_kwargs.hidden_batch_norm = False
    config.data.batch_size = 32
    # Sets of 5 drawings of one character.
    config.data.set_size = 5
    config.data.num_classes = 1
    config.train.steps = 300_000
    config.train.likelihood_weight_period = 300
    config.train.grad_clip_value = 0.5
    config.train.eval_every = 1000
    # The KL rule needs no samples: the accuracy costs seconds a validation.
    config.train.val_tasks = ((5, 1), (20, 1))
    # Validate, evaluate and export a moving average of the weights: 3.4-7.4 nats of
    # validation bound over the trained weights at a constant learning rate (README).
    config.train.ema_decay = 0.999
    # Slow steps: log (and check for signals) every 20.
    config.train.steps_per_loop = 20
    config.eval.batch_size = 10
    config.eval.chunk_size = 100
    # The likelihood rule runs the decoder per (query, class, sample): 10 samples, not
    # 100. The paper's rule, KL between context posteriors, needs no samples.
    config.eval.classification_num_samples = 10
    if variant in ("quick", "tiny"):
        small = variant == "quick"
        config.model_kwargs.encoder_channels = (16, 32, 64) if small else (4, 4, 4)
        config.model_kwargs.convs_per_stage = 1
        config.model_kwargs.decoder_channels = (64, 32, 16) if small else (4, 4, 4)
        config.model_kwargs.decoder_convs_per_stage = 1
        config.model_kwargs.hidden_size = 64 if small else 8
        config.model_kwargs.context_size = 32 if small else 4
        config.model_kwargs.latent_size = 16 if small else 2
        config.model_kwargs.residual_layers = 2
    return common.apply_variant(config, variant, quick_steps=800)
