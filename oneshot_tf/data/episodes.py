"""Episodes: sets of T drawings from up to C characters, as a tf.data pipeline.

An episode holds `set_size` items. Its classes are `num_classes` distinct characters;
`class_mix` says how items are shared among them (`balanced`: as evenly as possible,
`random`: each item's class uniform, so some episodes use fewer classes). Inside a
class, items are distinct drawers (drawn without replacement), unless
`with_replacement` (the GMN authors' sampler: a later item can be an exact copy of an
earlier one; only for comparing with their numbers). Item order is random.

Everything is a stateless function of (seed, episode batch index), so a pipeline
restarted at batch index i yields exactly what the uninterrupted one would have, and
nothing depends on tf.data's iteration order.
"""

import numpy as np
import tensorflow as tf

from oneshot_tf.data import omniglot

BINARIZATIONS = ("fixed", "dynamic")
CLASS_MIXES = ("balanced", "random")


def binarize(ink_levels: tf.Tensor, mode: str, seed: tf.Tensor) -> tf.Tensor:
    """Turns uint8 ink levels into float32 binary images (ink = 1.0).

    Args:
      ink_levels: uint8, any shape.
      mode: `fixed` (threshold at half ink) or `dynamic` (Bernoulli with the grey
        level as probability; binary sources are unchanged by it).
      seed: int32 [2], used by `dynamic`.
    """
    probs = tf.cast(ink_levels, tf.float32) / 255.0
    if mode == "fixed":
        return tf.cast(probs >= 0.5, tf.float32)
    if mode == "dynamic":
        return tf.cast(tf.random.stateless_uniform(tf.shape(probs), seed) < probs, tf.float32)
    raise omniglot.DataError(f"unknown binarization {mode!r}; valid: {', '.join(BINARIZATIONS)}")


def random_dilation(images: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """Thickens the strokes of each image (3x3 max filter) with `probability`.

    Args:
      images: float32 [..., 28, 28, 1] binary, ink = 1.0.
    """
    flat = tf.reshape(images, [-1, 28, 28, 1])
    dilated = tf.nn.max_pool2d(flat, ksize=3, strides=1, padding="SAME")
    chosen = tf.random.stateless_uniform([tf.shape(flat)[0], 1, 1, 1], seed) < probability
    return tf.reshape(tf.where(chosen, dilated, flat), tf.shape(images))


def check_episode_shape(
    set_size: int, num_classes: int, num_characters: int, num_drawers: int, with_replacement: bool = False
):
    if num_classes < 1 or set_size < 1:
        raise omniglot.DataError(f"set_size={set_size} and num_classes={num_classes} must be >= 1")
    if num_classes > num_characters:
        raise omniglot.DataError(f"num_classes={num_classes} exceeds the {num_characters} characters available")
    if set_size > num_classes * num_drawers and not with_replacement:
        raise omniglot.DataError(
            f"set_size={set_size} needs more than num_classes * {num_drawers} drawers "
            "(items of a class are drawn without replacement)"
        )


def sample_episodes(
    images: tf.Tensor,
    seed: tf.Tensor,
    *,
    batch_size: int,
    set_size: int,
    num_classes: int,
    class_mix: str = "balanced",
    with_replacement: bool = False,
) -> dict:
    """Draws one batch of episodes.

    Args:
      images: uint8 ink levels [num_characters, num_drawers, 28, 28].
      seed: int32 [2].
      batch_size, set_size, num_classes, class_mix, with_replacement: see the module docstring.

    Returns:
      dict with `ink` uint8 [batch, set_size, 28, 28], `labels` int32 [batch, set_size]
      (class index inside the episode, 0..num_classes-1), `characters` and `drawers`
      int32 [batch, set_size] (row and column of `images`).
    """
    if class_mix not in CLASS_MIXES:
        raise omniglot.DataError(f"unknown class_mix {class_mix!r}; valid: {', '.join(CLASS_MIXES)}")
    num_characters, num_drawers = images.shape[0], images.shape[1]
    check_episode_shape(set_size, num_classes, num_characters, num_drawers, with_replacement)
    class_seed, mix_seed, drawer_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))

    # C distinct characters per episode: the first C of a random permutation.
    keys = tf.random.stateless_uniform([batch_size, num_characters], class_seed)
    characters = tf.math.top_k(keys, k=num_classes).indices  # [B, C]

    if class_mix == "balanced":
        labels = tf.tile(tf.range(set_size)[None] % num_classes, [batch_size, 1])
    else:
        # Uniform classes, capped so no class needs more than num_drawers items:
        # class of item j = the j-th entry of a random arrangement of C x drawers slots.
        slots = tf.tile(tf.range(num_classes * num_drawers)[None] // num_drawers, [batch_size, 1])
        slot_keys = tf.random.stateless_uniform(tf.shape(slots), mix_seed)
        order = tf.argsort(slot_keys, axis=1)[:, :set_size]
        labels = tf.gather(slots, order, batch_dims=1)
    labels = tf.cast(labels, tf.int32)  # [B, T]

    if with_replacement:
        drawers = tf.random.stateless_uniform([batch_size, set_size], drawer_seed, maxval=num_drawers, dtype=tf.int32)
    else:
        # Within class, the k-th item of that class takes the k-th drawer of a permutation.
        one_hot = tf.one_hot(labels, num_classes, dtype=tf.int32)  # [B, T, C]
        rank = tf.reduce_sum((tf.cumsum(one_hot, axis=1) - 1) * one_hot, axis=-1)  # [B, T]
        drawer_perm = tf.argsort(
            tf.random.stateless_uniform([batch_size, num_classes, num_drawers], drawer_seed), axis=-1
        )
        class_perm = tf.gather(drawer_perm, labels, batch_dims=1)  # [B, T, drawers]
        drawers = tf.gather(class_perm, rank, batch_dims=2)  # [B, T]

    # Random item order.
    shuffle = tf.argsort(tf.random.stateless_uniform([batch_size, set_size], order_seed), axis=1)
    labels = tf.gather(labels, shuffle, batch_dims=1)
    drawers = tf.gather(drawers, shuffle, batch_dims=1)
    chars = tf.gather(characters, labels, batch_dims=1)
    ink = tf.gather_nd(images, tf.stack([chars, drawers], axis=-1))
    return {
        "ink": ink,
        "labels": labels,
        "characters": tf.cast(chars, tf.int32),
        "drawers": tf.cast(drawers, tf.int32),
    }


def episode_dataset(
    characters: "omniglot.CharacterSet",
    *,
    batch_size: int,
    set_size: int,
    num_classes: int = 1,
    class_mix: str = "balanced",
    with_replacement: bool = False,
    binarization: str = "fixed",
    dilation_probability: float = 0.0,
    seed: int = 0,
    start: int = 0,
) -> tf.data.Dataset:
    """An endless dataset of episode batches.

    Args:
      characters: the characters to draw from.
      batch_size: episodes per element.
      set_size, num_classes, class_mix, with_replacement: see the module docstring.
      binarization: `fixed` or `dynamic` (fresh Bernoulli draws at every batch).
      dilation_probability: chance that an item's strokes are thickened (augmentation).
      seed: the stream's seed.
      start: index of the first batch (a resumed run passes its step).

    Returns:
      A dataset of dicts: `images` float32 [batch, set_size, 28, 28, 1] (ink = 1.0),
      `labels` int32 [batch, set_size].
    """
    check_episode_shape(set_size, num_classes, len(characters), characters.images.shape[1], with_replacement)
    if binarization not in BINARIZATIONS:
        raise omniglot.DataError(f"unknown binarization {binarization!r}; valid: {', '.join(BINARIZATIONS)}")
    images = tf.constant(characters.images)

    def make_batch(index):
        batch_seed = tf.stack([tf.constant(seed, tf.int64), index])
        batch_seed = tf.cast(batch_seed % (2**31 - 1), tf.int32)
        sample_seed, binarize_seed, dilate_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 3))
        episode = sample_episodes(
            images,
            sample_seed,
            batch_size=batch_size,
            set_size=set_size,
            num_classes=num_classes,
            class_mix=class_mix,
            with_replacement=with_replacement,
        )
        binary = binarize(episode["ink"], binarization, binarize_seed)[..., None]
        if dilation_probability > 0:
            binary = random_dilation(binary, dilation_probability, dilate_seed)
        return {"images": binary, "labels": episode["labels"]}

    dataset = tf.data.Dataset.counter(start=start)
    return dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fixed_episodes(
    characters: "omniglot.CharacterSet",
    *,
    num_episodes: int,
    set_size: int,
    num_classes: int = 1,
    class_mix: str = "balanced",
    with_replacement: bool = False,
    seed: int = 0,
) -> dict:
    """A reproducible evaluation set: `num_episodes` episodes, fixed binarisation
    (with_replacement and the rest: see episode_dataset).

    Returns:
      dict of numpy arrays: `images` float32 [num_episodes, set_size, 28, 28, 1],
      `labels` int32 [num_episodes, set_size].
    """
    dataset = episode_dataset(
        characters,
        batch_size=num_episodes,
        set_size=set_size,
        num_classes=num_classes,
        class_mix=class_mix,
        with_replacement=with_replacement,
        binarization="fixed",
        seed=seed,
    )
    return {k: v.numpy() for k, v in next(iter(dataset)).items()}


def fixed_binary(ink_levels: np.ndarray) -> np.ndarray:
    """numpy twin of binarize(..., "fixed"): uint8 ink levels -> float32 {0, 1}, same shape."""
    return (ink_levels >= 128).astype(np.float32)


def all_images(characters: "omniglot.CharacterSet") -> np.ndarray:
    """Every drawing, fixed-binarised: float32 [num_characters * num_drawers, 28, 28, 1]."""
    flat = characters.images.reshape(-1, omniglot.IMAGE_SIZE, omniglot.IMAGE_SIZE)
    return fixed_binary(flat)[..., None]
