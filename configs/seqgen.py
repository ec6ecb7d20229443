"""Sequential generative model (Rezende et al. 2016), conditioned on support drawings.

80 canvas steps as the paper's Omniglot number; LSTMs of 256; z of 4 dims per step;
12x12 read and write patches. Trained on episodes of 5 drawings of one character,
each scored given those before it (0..4 shots). Variants: default, quick, tiny.
"""

from oneshot_tf.configs import common


def get_config(variant: str = "default"):
    config = common.get_config()
    config.model = "seqgen"
    # Canvas updates S.
    config.model_kwargs.num_steps = 80
    config.model_kwargs.hidden_size = 256
    config.model_kwargs.latent_size = 4
    config.model_kwargs.read_size = 12
    config.model_kwargs.write_size = 12
    config.model_kwargs.key_size = 64
    # 1 and 0: the canvas is the logits, as in DRAW. More channels and filters: the
    # paper's hidden canvas with a convolutional observation function f_o.
    config.model_kwargs.canvas_channels = 1
    config.model_kwargs.observation_filters = 0
    # True: no gradient from where the reads look back into the decoder state (the
    # forward pass is the same); README seqgen: the gradients it stops exploded.
    config.model_kwargs.detach_read_windows = False
    # True: reads average over the grid's spacing instead of sampling every other
    # pixel of a wide window (README seqgen: the antialiased reads trial).
    config.model_kwargs.antialias_reads = False
    # 0: the encoder reads the target through a read_size patch; 28: at full resolution
    # (README seqgen: the full-resolution target read trial).
    config.model_kwargs.target_read_size = 0
    config.data.batch_size = 16
    config.data.set_size = 5
    config.data.num_classes = 1
    config.train.steps = 200_000
    config.train.eval_every = 1000
    # Slow steps: log (and check for signals) every 20.
    config.train.steps_per_loop = 20
    config.train.grad_clip_norm = 10.0
    # Adam at 1e-3 diverged near step 1,200 in float32 and bfloat16 alike (gradient
    # norms before clipping reached 1e10); 1e-4 from the same checkpoint trained on.
    config.train.learning_rate = 1e-4
    config.eval.batch_size = 5
    config.eval.chunk_size = 50
    if variant == "quick":
        config.model_kwargs.num_steps = 8
        config.model_kwargs.hidden_size = 128
        config.model_kwargs.latent_size = 8
    elif variant == "tiny":
        config.model_kwargs.num_steps = 2
        config.model_kwargs.hidden_size = 8
        config.model_kwargs.latent_size = 2
        config.model_kwargs.read_size = 3
        config.model_kwargs.write_size = 3
        config.model_kwargs.key_size = 4
    config = common.apply_variant(config, variant, quick_steps=800)
    if variant == "quick":
        # Every score runs the 8-step recurrence per importance sample: fewer samples.
        config.eval.num_samples = 20
        config.eval.classification_num_samples = 2
    return config
