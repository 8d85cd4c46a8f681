import pytest

from benchmarks.flops import dit_flops_per_image
from configs import digits_dit
from training import step_cost


def test_counting_twin_unrolls_every_loop_and_keeps_the_rest():
    config = digits_dit.get_config()
    config.training.grad_accumulation_steps = 4
    twin = step_cost.counting_twin(config)
    assert not twin.model.use_scan and twin.training.grad_accumulation_steps == 1
    assert twin.model.depth == config.model.depth and twin.batch_size == config.batch_size
    assert step_cost.counting_twin(twin).to_dict() == twin.to_dict()


def test_model_flops_match_the_closed_form_and_ignore_scan_remat_and_accumulation():
    config = digits_dit.get_config()
    flops = step_cost.model_flops(config)
    depth, hidden = config.model.depth, config.model.hidden_size
    tokens = (config.data.image_size // config.model.patch_size) ** 2
    closed = dit_flops_per_image(depth, hidden, tokens, config.model.mlp_ratio)
    # Kaplan's 6 N T + attention for the blocks; embeddings, adaLN and the head add a little.
    assert 1.0 <= flops / config.batch_size / closed < 1.15
    config.model.remat, config.training.grad_accumulation_steps = True, 2
    assert step_cost.model_flops(config) == pytest.approx(flops, rel=1e-6)


def test_model_flops_of_an_autoencoder_run():
    from configs import digits_vae  # noqa: PLC0415 (a model section without remat)

    config = digits_vae.get_config()
    assert "remat" not in config.model
    assert step_cost.model_flops(config) > 0
