"""DiTConfig.validate: every bad field is refused with a message naming it."""

import pytest

from models.dit_config import DiTConfig


@pytest.mark.parametrize(
    "changes,match",
    [
        (
            {"patch_size": 3},
            r"model\.patch_size=3 must be a positive divisor of data\.image_size=32",
        ),
        ({"size": "XXL"}, r"model\.size='XXL' is not one of \['S', 'B', 'L', 'XL'\]"),
        ({"num_heads": 5}, r"model\.num_heads=5 must divide the hidden size 384"),
        ({"hidden_size": 390, "num_heads": 6}, r"model\.pos_embed='sincos' needs .* 390"),
        ({"pos_embed": "rope"}, r"model\.pos_embed='rope' is not one of \('sincos', 'learned'\)"),
        ({"depth": 0}, r"model\.depth=0 must be a positive int or None"),
        ({"dropout": 1.0}, r"model\.dropout=1.0 must be in \[0, 1\)"),
        ({"num_classes": 0}, r"model\.num_classes=0 must be a positive int or None"),
        ({"dtype": "float16"}, r"model\.dtype='float16' is not one of \['bfloat16', 'float32'\]"),
        (
            {"attention_impl": "flash"},
            r"model\.attention_impl='flash' is not known; allowed: None, 'xla', 'cudnn'",
        ),
    ],
)
def test_invalid_configs_are_explained(changes, match):
    with pytest.raises(ValueError, match=match):
        DiTConfig(**changes).validate()
