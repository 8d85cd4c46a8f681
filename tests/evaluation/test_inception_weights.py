"""The FID Inception weight converter (.pth -> safetensors) and the runtime reader's checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from evaluation import inception, inception_weights


@pytest.fixture(scope="module")
def abstract():
    """The network's parameter shapes."""
    return inception.inception_model().abstract_params


@pytest.fixture(scope="module")
def tensors(abstract) -> dict[str, np.ndarray]:
    """Random float32 tensors with every name and shape of pytorch-fid's state dict."""
    rng = np.random.default_rng(0)
    shapes = inception_weights.torch_shapes(abstract)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def converted(tensors, tmp_path_factory):
    """A .pth as pytorch-fid ships it (batch norms with their counters) and its conversion."""
    directory = tmp_path_factory.mktemp("weights")
    state_dict = {name: torch.from_numpy(array) for name, array in tensors.items()}
    for name in tensors:
        if name.endswith(".bn.running_var"):
            counter = name.replace("running_var", "num_batches_tracked")
            state_dict[counter] = torch.tensor(0, dtype=torch.long)
    torch_path = directory / "pt_inception.pth"
    torch.save(state_dict, torch_path)
    out = directory / "pt_inception.safetensors"
    inception_weights.main([f"--torch_weights={torch_path}", f"--out={out}"])
    return torch_path, out


def _assert_how_to_get(message: str) -> None:
    assert inception_weights.FID_WEIGHTS_URL in message
    assert inception_weights.CONVERT_COMMAND in message


def test_how_to_get_names_the_weights_url_and_the_converter_command():
    assert inception_weights.FID_WEIGHTS_URL.endswith("pt_inception-2015-12-05-6726825d.pth")
    assert inception_weights.CONVERT_COMMAND.startswith("python -m evaluation.inception_weights")
    _assert_how_to_get(inception_weights.HOW_TO_GET)


def test_expected_tensors_are_pytorch_fids(abstract):
    shapes = inception_weights.torch_shapes(abstract)
    assert len(shapes) == 472  # 94 conv blocks x (weight + 4 batch-norm tensors) + fc (2)
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)


def test_converter_keeps_torch_names_and_drops_counters(tensors, converted):
    _, out = converted
    written = load_file(out)
    assert sorted(written) == sorted(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(written[name], array)


def test_reader_maps_tensors_to_our_layout(abstract, tensors, converted):
    _, out = converted
    params = inception_weights.read_params(out, abstract)
    conv = params["Mixed_6b"]["branch7x7_2"]
    np.testing.assert_array_equal(  # [O, I, kh, kw] -> [kh, kw, I, O]
        conv["conv"]["kernel"],
        tensors["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(conv["bn"]["var"], tensors["Mixed_6b.branch7x7_2.bn.running_var"])
    np.testing.assert_array_equal(conv["bn"]["scale"], tensors["Mixed_6b.branch7x7_2.bn.weight"])
    np.testing.assert_array_equal(params["fc"]["kernel"], tensors["fc.weight"].T)
    np.testing.assert_array_equal(params["fc"]["bias"], tensors["fc.bias"])


def test_missing_file_says_where_to_get_the_weights(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as error:
        inception.load_inception(path)
    _assert_how_to_get(str(error.value))


def test_a_pth_is_refused_at_runtime(converted):
    torch_path, _ = converted
    with pytest.raises(ValueError, match=r"\.pth.*never read at runtime") as error:
        inception.load_inception(torch_path)
    assert str(torch_path) in str(error.value)
    _assert_how_to_get(str(error.value))


def test_a_corrupt_safetensors_file_is_refused(abstract, tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"PK\x03\x04 not safetensors")
    with pytest.raises(ValueError, match="could not be read as safetensors") as error:
        inception_weights.read_params(path, abstract)
    _assert_how_to_get(str(error.value))


@pytest.mark.parametrize(
    "change, expected",
    [
        ("drop", r"1 missing: fc\.bias"),
        ("add", r"1 unexpected: AuxLogits\.fc\.weight"),
        ("reshape", r"1 wrong shape: fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)"),
    ],
    ids=["missing", "unexpected", "wrong_shape"],
)
def test_wrong_tensors_are_refused_by_reader_and_converter(
    abstract, tensors, tmp_path, change, expected
):
    wrong = dict(tensors)
    if change == "drop":
        del wrong["fc.bias"]
    elif change == "add":
        wrong["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    else:
        wrong["fc.weight"] = np.zeros((1000, 2048), np.float32)
    path = tmp_path / "wrong.safetensors"
    save_file(wrong, str(path))
    with pytest.raises(ValueError, match=expected) as error:
        inception_weights.read_params(path, abstract)
    assert str(path) in str(error.value)
    _assert_how_to_get(str(error.value))

    torch_path = tmp_path / "wrong.pth"
    torch.save({name: torch.from_numpy(array) for name, array in wrong.items()}, torch_path)
    with pytest.raises(ValueError, match=expected) as error:
        inception_weights.convert(torch_path, tmp_path / "out.safetensors", abstract)
    assert str(torch_path) in str(error.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_converter_refuses_a_missing_pth(abstract, tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as error:
        inception_weights.convert(path, tmp_path / "out.safetensors", abstract)
    _assert_how_to_get(str(error.value))
