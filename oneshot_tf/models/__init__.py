"""The model registry: `get_model(name, **kwargs)`.

IWAE is the VAE with `num_samples > 1` (configs/iwae.py), not a class of its own.
"""

from oneshot_tf.models import base
from oneshot_tf.models.gmn import GenerativeMatchingNetwork
from oneshot_tf.models.seqgen import SequentialGenerativeModel
from oneshot_tf.models.statistician import NeuralStatistician
from oneshot_tf.models.vae import Vae

MODELS = {
    "vae": Vae,
    "iwae": Vae,
    "gmn": GenerativeMatchingNetwork,
    "statistician": NeuralStatistician,
    "seqgen": SequentialGenerativeModel,
}


def get_model(name: str, **kwargs) -> base.FewShotModel:
    """Builds the registered model `name` with constructor kwargs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
