import pytest

from configs import cifar_ddpm
from models import registry
from models.functional import count_params, functionalize


def test_cifar_config_builds_the_35_7m_unet():
    config = cifar_ddpm.get_config()
    model_config = registry.make_model_config(config.model, image_size=32, channels=3)
    assert model_config.channel_mult == (1, 2, 2, 2) and model_config.dropout == 0.1
    assert (
        count_params(functionalize(registry.build_model(model_config)).abstract_params)
        == 35_746_307
    )


def test_unknown_model_name_lists_the_choices():
    config = cifar_ddpm.get_config()
    config.model.name = "vit"
    with pytest.raises(ValueError, match=r"model\.name='vit' is not known; allowed: unet"):
        registry.make_model_config(config.model, image_size=32, channels=3)
