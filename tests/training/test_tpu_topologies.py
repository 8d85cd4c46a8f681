import pytest

from errors import ConfigError
from training import tpu_topologies


@pytest.mark.parametrize(
    "given, expected",
    [
        ("v5e:4x4", "v5e:4x4"),
        ("v5e-8", "v5e:2x4"),
        ("v5litepod-16", "v5e:4x4"),
        ("v5e-256", "v5e:16x16"),
        ("v4-32", "v4:2x2x4"),  # Cloud v4 names count TensorCores: 16 chips
        ("v5p-128", "v5p:4x4x4"),
        ("v6e-8", "v6e:2x4"),
    ],
)
def test_cloud_and_jax_names_resolve_to_jax_topologies(given, expected):
    name, chip = tpu_topologies.resolve(given)
    assert name == expected
    assert chip.generation == expected.split(":")[0]


@pytest.mark.parametrize("bad", ["v3-8", "tpu", "v5e:4", "v5e-12", "v4-6"])
def test_unknown_topologies_are_refused_with_what_is_known(bad):
    with pytest.raises(ConfigError, match=r"compile\.topology"):
        tpu_topologies.resolve(bad)


def test_chip_datasheet_figures():
    assert tpu_topologies.CHIPS["v5e"].hbm_bytes == 16 * 2**30
    assert tpu_topologies.CHIPS["v5e"].peak_bf16_flops == 197e12
    assert tpu_topologies.CHIPS["v5p"].hbm_bytes == 95 * 2**30
