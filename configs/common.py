"""Fields every model's config has; `configs/<model>.py` start from `get_config()` here."""

import ml_collections

from oneshot_tf import errors


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Registry name in oneshot_tf.models.MODELS; must match --model.
    config.model = ""
    # Constructor keyword arguments of the model class.
    config.model_kwargs = ml_collections.ConfigDict()
    # Seeds the model's sampling, data streams and the validation carve-out.
    config.seed = 0
    # Keras dtype policy: "float32", "mixed_bfloat16" (bfloat16 compute, float32
    # variables; likelihoods, KL and log-sum-exps stay float32 either way) or "auto":
    # mixed_bfloat16 where the hardware has fast bfloat16 (oneshot_tf/precision.py).
    config.precision = "auto"

    config.data = ml_collections.ConfigDict()
    # auto | gmn28 | upstream | tfds (oneshot_tf/data/omniglot.py).
    config.data.source = "auto"
    # lake (background vs evaluation alphabets) | vinyals (Vinyals et al.'s files: mostly
    # unseen alphabets) | random (as many characters, from all alphabets: the NS paper's
    # protocol); both with rotations.
    config.data.split = "lake"
    # Training characters held out for validation under the lake split.
    config.data.num_val_characters = 50
    # fixed (threshold) | dynamic (Bernoulli resampling each batch; binary sources unaffected).
    config.data.binarization = "dynamic"
    # Episodes per training batch.
    config.data.batch_size = 64
    # Items per training episode (T) and characters per episode (C).
    config.data.set_size = 1
    config.data.num_classes = 1
    # balanced (items spread evenly over the C classes) | random (uniform class per item).
    config.data.class_mix = "balanced"
    # Training augmentations: rotated / mirrored characters as new classes, and the
    # chance that a drawing's strokes are thickened.
    config.data.augment_turns = False
    config.data.augment_flips = False
    config.data.dilation_probability = 0.0
    # Let the tfds source download Omniglot (needs internet).
    config.data.tfds_download = False

    config.train = ml_collections.ConfigDict()
    # Total optimizer steps.
    config.train.steps = 100_000
    # Peak Adam learning rate and its schedule: constant | cosine | cosine_tail |
    # exponential | burda.
    config.train.learning_rate = 1e-3
    config.train.schedule = "constant"
    # Linear warm-up of the learning rate over the first steps (any schedule); 0: none.
    config.train.warmup_steps = 0
    # Start from the weights of an export (e.g. pretrained/hfsgm, or one version folder
    # of it) instead of a random initialisation; optimizer and schedule start afresh.
    # Read only when the workdir has no checkpoint yet (oneshot_tf/warm_start.py).
    config.train.init_from = ""
    # cosine_tail: constant until this step, then a cosine decay to 0 at train.steps.
    config.train.decay_start = 0
    # exponential: multiply by decay_rate every decay_steps.
    config.train.decay_rate = 0.5
    config.train.decay_steps = 50_000
    # Adam epsilon (Burda et al. use 1e-4).
    config.train.adam_epsilon = 1e-7
    # Clip gradients to this global norm; 0 disables.
    config.train.grad_clip_norm = 0.0
    # Clamp each gradient element to [-v, v] (the public Neural Statistician uses 0.5);
    # 0 disables. At most one of grad_clip_norm and grad_clip_value.
    config.train.grad_clip_value = 0.0
    # Optimise w * log-likelihood - KL / w with w = 1 + 0.5 ** (step // period), the
    # public Neural Statistician's schedule (period 300, one of its epochs): the KL
    # counts less early on. Needs a model with separable_elbo. 0: the plain bound.
    config.train.likelihood_weight_period = 0
    # Also train on the first n items of every training set as a set of its own, for
    # each n here (each 1 <= n < data.set_size): (1,) adds the single drawings that
    # 0-shot scoring, log p(x_1), and 1-shot supports are. The loss is then the
    # negative bound per item over all the sets scored; validation stays on full sets.
    config.train.prefix_set_sizes = ()
    # Validate, evaluate, sample and export with an exponential moving average of the
    # weights (and batch-norm statistics) of this decay per step; 0 disables.
    config.train.ema_decay = 0.0
    # XLA-compile the training step (whether it pays depends on the model and device).
    config.train.jit_compile = False
    # Steps run inside one tf.function call; also the logging period.
    config.train.steps_per_loop = 200
    # Save a checkpoint every this many seconds (and at the end or on SIGINT/SIGTERM).
    config.train.checkpoint_every_secs = 300
    # Validation bound, summaries and a sample grid every this many steps; 0 disables.
    config.train.eval_every = 10_000
    # Validation episodes for the periodic bound.
    config.train.val_episodes = 512
    # Few-shot tasks, (ways, shots) pairs, scored at every validation on validation
    # characters with the model's first classification rule (a model without one:
    # ConfigError); the accuracy goes to the log and to TensorBoard
    # (val/<ways>way_<shots>shot_<rule>_accuracy) and onto the learning curve.
    config.train.val_tasks = ()
    # Queries per validation task (ways of them an episode).
    config.train.val_task_queries = 1000
    config.train.max_checkpoints = 3
    # Steps in a row with a non-finite loss or gradient (each skipped) before the run
    # restores its latest checkpoint; the same again stops it.
    config.train.max_bad_steps = 20

    config.eval = ml_collections.ConfigDict()
    # Checkpoint that eval, sample and export restore: best (best validation bound,
    # kept when train.eval_every validates; the latest until then) | latest.
    config.eval.checkpoint = "best"
    # Test episodes for the per-shot table (SPEC §3), characters per episode, items per episode.
    config.eval.episodes = 1000
    config.eval.c_test = 1
    config.eval.set_size = 10
    # Items of a character drawn with replacement, as the GMN authors' code did (a later
    # item can copy an earlier one, which flatters late shots): for comparing with their
    # table only; writes eval_with_replacement.json beside the protocol's eval.json.
    config.eval.with_replacement = False
    # Importance samples K per log p(x_t | x_<t).
    config.eval.num_samples = 1000
    config.eval.seed = 0
    # Episodes per evaluation batch and importance samples per chunk (memory vs speed).
    config.eval.batch_size = 50
    config.eval.chunk_size = 250
    # Models that score a set jointly (the statistician) also report log p(x_1..x_n) / n
    # of the first n items of each episode, importance-sampled over all the set's latents
    # (SPEC §3's set-level anchors use sets of 5); 0 skips it.
    config.eval.joint_set_size = 5
    # K of that joint score; 0: num_samples. The joint costs about a tenth of the per-shot
    # table at the same K, so a quick table (num_samples=100) can keep the protocol's 1000 here.
    config.eval.joint_num_samples = 0
    # Also score every test drawing unconditionally with test_num_samples (Burda's protocol).
    config.eval.all_test_images = False
    config.eval.test_num_samples = 5000

    # Few-shot classification (conditional models): queries per random N-way task
    # (0 skips classification) and importance samples per likelihood score.
    config.eval.classification_queries = 400
    config.eval.classification_num_samples = 100

    config.export = ml_collections.ConfigDict()
    # Dtype of the exported floating-point weights: float16 halves the SavedModel.
    config.export.weights_dtype = "float32"

    config.sample = ml_collections.ConfigDict()
    # Rows of the sample grid, support images per row, new samples per row.
    config.sample.rows = 8
    config.sample.shots = 5
    config.sample.samples_per_row = 10
    config.sample.seed = 0
    return config


VARIANTS = ("default", "quick", "tiny")


def apply_variant(
    config: ml_collections.ConfigDict, variant: str, *, quick_steps: int = 3000
) -> ml_collections.ConfigDict:
    """Shrinks the run for `quick` (a run of minutes) or `tiny` (unit tests).

    Model sizes are the model config's business; this changes steps, episodes and
    sample counts only (`quick_steps` training steps for `quick`). Returns the
    config, locked so a misspelt field fails.
    """
    if variant not in VARIANTS:
        raise errors.ConfigError(f"unknown config variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if variant == "quick":
        config.train.steps = quick_steps
        config.train.steps_per_loop = 100
        config.train.eval_every = quick_steps // 2
        config.train.val_episodes = 64
        config.train.val_task_queries = 200
        config.eval.episodes = 100
        config.eval.num_samples = 100
        config.eval.test_num_samples = 100
        config.eval.classification_queries = 40
        config.eval.classification_num_samples = 10
        config.sample.rows = 4
    elif variant == "tiny":
        config.data.batch_size = 2
        config.train.steps = 2
        config.train.steps_per_loop = 1
        config.train.eval_every = 2
        config.train.val_episodes = 4
        config.train.val_task_queries = 20
        config.eval.episodes = 4
        config.eval.num_samples = 4
        config.eval.batch_size = 2
        config.eval.chunk_size = 2
        config.eval.test_num_samples = 4
        config.eval.classification_queries = 20
        config.eval.classification_num_samples = 2
        config.sample.rows = 2
        config.sample.samples_per_row = 3
    config.lock()
    return config
