"""The model registry: `get_model(name, **kwargs)` and `build_model(name, **kwargs)`.

IWAE is the VAE with `num_samples > 1` (configs/iwae.py), not a class of its own.
"""

import tensorflow as tf

from oneshot_tf import errors
from oneshot_tf.models import base, layers
from oneshot_tf.models.gmn import GenerativeMatchingNetwork
from oneshot_tf.models.hfsgm import HierarchicalFewShotModel
from oneshot_tf.models.seqgen import SequentialGenerativeModel
from oneshot_tf.models.statistician import NeuralStatistician
from oneshot_tf.models.vae import Vae

MODELS = {
    "vae": Vae,
    "iwae": Vae,
    "gmn": GenerativeMatchingNetwork,
    "statistician": NeuralStatistician,
    "hfsgm": HierarchicalFewShotModel,
    "seqgen": SequentialGenerativeModel,
}


def get_model(name: str, **kwargs) -> base.FewShotModel:
    """Builds the registered model `name` with constructor kwargs."""
    if name not in MODELS:
        raise errors.ConfigError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except ValueError as e:  # A constructor rejecting its config's model_kwargs.
        raise errors.ConfigError(f"model_kwargs of {name}: {e}") from e


def build_model(name: str, **kwargs) -> base.FewShotModel:
    """`get_model(name, **kwargs)` with its variables created (by one call on zeros),
    ready for a checkpoint to restore into."""
    model = get_model(name, **kwargs)
    model.elbo(tf.zeros([1, 2, *layers.IMAGE_SHAPE]), tf.constant([0, 0]), training=False)
    return model
