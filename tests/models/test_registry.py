import dataclasses

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


def test_unknown_model_field_is_named_with_the_allowed_ones():
    config = cifar_ddpm.get_config()
    config.model.num_layers = 12
    with pytest.raises(
        ValueError, match=r"model\.num_layers is not a field .*allowed: .*base_channels"
    ):
        registry.make_model_config(config.model, image_size=32, channels=3)


def test_data_shape_and_conditioning_flow_into_the_validated_config():
    config = cifar_ddpm.get_config()
    model_config = registry.make_model_config(
        config.model, image_size=32, channels=1, num_classes=10, context_dim=64
    )
    assert (model_config.in_channels, model_config.out_channels) == (1, 1)
    assert (model_config.num_classes, model_config.context_dim) == (10, 64)
    with pytest.raises(ValueError, match=r"data\.image_size=28 cannot be halved 3 times"):
        registry.make_model_config(config.model, image_size=28, channels=3)


def test_pooled_dim_reaches_only_config_classes_with_that_field(monkeypatch):
    config = cifar_ddpm.get_config()
    model_config = registry.make_model_config(
        config.model, image_size=32, channels=3, context_dim=64, pooled_dim=32
    )
    assert model_config.pooled_dim == 32

    @dataclasses.dataclass(frozen=True)
    class NoPooledConfig:
        image_size: int
        in_channels: int
        out_channels: int
        num_classes: int | None
        context_dim: int | None

        def validate(self) -> None:
            pass

    monkeypatch.setitem(registry.MODELS, "plain", (object, NoPooledConfig))
    plain = registry.make_model_config({"name": "plain"}, image_size=8, channels=1)
    assert isinstance(plain, NoPooledConfig)
    with pytest.raises(ValueError, match=r"model\.name='plain' takes no pooled text embedding"):
        registry.make_model_config({"name": "plain"}, image_size=8, channels=1, pooled_dim=4)
