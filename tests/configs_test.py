"""Every config file in configs/ loads in every variant into something the trainer accepts."""

import pytest
from oneshot_tf.configs import common

from oneshot_tf import configs, main, models, train
from tests import helpers

CONFIG_NAMES = sorted(p.stem for p in (helpers.REPO / "configs").glob("*.py") if p.stem not in ("__init__", "common"))


def test_the_config_folder_is_found():
    assert {"statistician", "statistician_deep", "scha_vae", "gmn"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("variant", common.VARIANTS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_loads_for_its_model_and_schedule(name, variant):
    config = configs.get_config(name, variant)
    assert main.load_config(config.model, config) is config
    assert 0 < config.train.steps
    train.make_schedule(config.train)  # A ConfigError for a schedule that does not fit the steps.
    with pytest.raises(AttributeError):  # Locked: a misspelt override fails instead of adding a field.
        config.train.stpes = 1


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_tiny_variant_builds_its_model(name):
    config = configs.get_config(name, "tiny")
    model = models.get_model(config.model, **config.model_kwargs.to_dict())
    assert isinstance(model, models.base.FewShotModel)


def test_deep_statistician_is_the_statistician_with_three_layers_of_z_of_32():
    paper, deep = configs.get_config("statistician"), configs.get_config("statistician_deep")
    assert (deep.model_kwargs.num_latent_layers, deep.model_kwargs.latent_size) == (3, 32)
    assert deep.data.augment_turns and deep.data.augment_flips
    assert (deep.train.schedule, deep.train.decay_start, deep.train.steps) == ("cosine_tail", 17_500, 24_000)
    changed = {k for k, v in deep.model_kwargs.items() if paper.model_kwargs[k] != v}
    assert changed == {"num_latent_layers", "latent_size"}
    # The small variants keep their schedules and sizes, with the deeper z.
    quick = configs.get_config("statistician_deep", "quick")
    assert quick.train.steps == configs.get_config("statistician", "quick").train.steps
    assert quick.model_kwargs.num_latent_layers == 3
