"""RunConfig.from_configdict and training.config_checks: a bad field (or combination) is refused
by name, value and what is allowed, before anything is built."""

import math

import ml_collections
import numpy as np
import pytest

from configs import cifar_ddpm, digits_ddpm, digits_dit, digits_flow, digits_text_unet, digits_vae
from errors import ConfigError
from training import config_checks
from training.run_config import RunConfig

DELETE = object()


def _with(module, **changes) -> ml_collections.ConfigDict:
    """module's config with `a__b=value` set as config.a.b (any type, as a config file can)."""
    config = module.get_config().to_dict()
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = config
        for name in parents:
            node = node[name]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return ml_collections.ConfigDict(config)


def _refused(config, match: str, num_devices: int = 8) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        RunConfig.from_configdict(config, num_devices, process_count=1)
    return str(info.value)


@pytest.mark.parametrize(
    "module", [cifar_ddpm, digits_ddpm, digits_dit, digits_flow, digits_text_unet, digits_vae]
)
def test_shipped_configs_pass(module):
    RunConfig.from_configdict(module.get_config(), 8, process_count=1)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("batch_size", "64", r"batch_size='64' \(str\) has the wrong type; expected int"),
        ("batch_size", None, r"batch_size=None \(NoneType\).*expected int"),
        ("seed", True, r"seed=True \(bool\).*expected int"),
        ("diffusion__num_timesteps", 10.5, r"diffusion\.num_timesteps=10\.5 .*expected int"),
        ("diffusion__beta_end", "0.02", r"diffusion\.beta_end='0\.02'.*finite float"),
        ("optimizer__learning_rate", math.nan, r"optimizer\.learning_rate=nan.*finite float"),
        ("model__channel_mult", "12", r"model\.channel_mult='12'.*tuple of int"),
        ("model__num_heads", 2.0, r"model\.num_heads=2\.0 .*expected int"),
        ("data__random_flip", 1, r"data\.random_flip=1 .*expected bool"),
        ("data__name", None, r"data\.name=None .*expected str"),
        ("sampler__num_steps", [10], r"sampler\.num_steps=\[10\] .*expected int"),
        ("mesh__data", "all", r"mesh\.data='all' .*expected int"),
        ("text_encoder__max_length", 1.5, r"text_encoder\.max_length=1\.5 .*expected int"),
        ("training__grad_accumulation_steps", "2", r"grad_accumulation_steps='2'"),
    ],
)
def test_wrong_types_are_named(field, value, match):
    _refused(_with(digits_ddpm, **{field: value}), match)


def test_dit_fields_are_typed_by_their_own_config():
    _refused(_with(digits_dit, model__depth="6"), r"model\.depth='6' .*expected int or None")
    RunConfig.from_configdict(_with(digits_dit, model__depth=None), 8, process_count=1)


def test_missing_fields_take_the_schemas_defaults_and_non_sections_are_refused():
    run = RunConfig.from_configdict(_with(digits_ddpm, diffusion__schedule=DELETE), 8, 1)
    assert run.diffusion.schedule == "linear"
    assert RunConfig.from_configdict(_with(digits_ddpm, batch_size=DELETE), 8, 1).batch_size == 128
    assert RunConfig.from_configdict(_with(digits_ddpm, mesh=DELETE), 8, 1).mesh.data == -1
    _refused(_with(digits_ddpm, model=3), r"model=3 must be a config section")
    _refused(_with(digits_ddpm, data="digits"), r"data='digits' must be a config section")
    unnamed = RunConfig.from_configdict(_with(digits_ddpm, model__name=DELETE), 8, 1)
    assert type(unnamed.model).__name__ == "UNetConfig"
    _refused(_with(digits_ddpm, model__name=None), r"model\.name=None is not known; allowed")


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("diffusion__schedule", "sigmoid", r"diffusion\.schedule='sigmoid'.*linear, cosine"),
        ("sampler__name", "plms", r"sampler\.name='plms' is not known; allowed: .*ddim"),
        ("model__name", "vit", r"model\.name='vit' is not known; allowed: unet, dit"),
        ("data__name", "imagenet", r"data\.name='imagenet' is not known; allowed: digits"),
        ("text_encoder__name", "bert", r"text_encoder\.name='bert' is not known; allowed: none, "),
        ("optimizer__name", "sgd", r"optimizer\.name='sgd'"),
        ("training__nonfinite_policy", "ignore", r"nonfinite_policy='ignore'.*skip, stop"),
        ("sampler__stepz", 10, r"sampler\.stepz is not a field of sampler; allowed: name, "),
        (
            "model__image_size",
            8,
            r"model\.image_size is not a field of model: the run sets it .*data",
        ),
    ],
)
def test_unknown_names(field, value, match):
    _refused(_with(digits_ddpm, **{field: value}), match)


def test_image_size_against_unet_depth_and_dit_patch():
    _refused(
        _with(digits_ddpm, model__channel_mult=(1, 2, 2, 2, 2)),
        r"data\.image_size=8 cannot be halved 4 times.*multiple of 16",
    )
    _refused(
        _with(digits_dit, model__patch_size=16),
        r"model\.patch_size=16 must be a positive divisor of data\.image_size=8",
    )


def test_batch_against_devices_and_mesh():
    _refused(
        _with(digits_ddpm, batch_size=20, mesh__data=4, mesh__fsdp=2),
        r"batch_size=20 must be a multiple of the 8 devices",
    )
    # Tensor parallelism does not split the batch: 4 data shards take a batch of 4.
    config = _with(digits_ddpm, batch_size=4, mesh__data=4, mesh__tensor=2)
    RunConfig.from_configdict(config, 8, process_count=1)
    _refused(_with(digits_ddpm, batch_size=4), r"batch_size=4 .*multiple of the 8 devices")


def test_mesh_against_device_count():
    _refused(
        _with(digits_ddpm, mesh__data=16), r"mesh\.data=16, .* multiply to 16, but there are 8"
    )
    _refused(
        _with(digits_ddpm, mesh__data=3),
        r"mesh\.data=3, mesh\.fsdp=1, mesh\.tensor=1 multiply to 3",
    )
    _refused(
        _with(digits_ddpm, mesh__fsdp=3),
        r"mesh\.data=-1, mesh\.fsdp=3, .*: the fixed axes use 3 devices, .*8 devices",
    )
    _refused(_with(digits_ddpm, mesh__tensor=0), r"mesh\.tensor=0 must be a positive size or -1")
    _refused(_with(digits_ddpm, mesh__rules="heads=gpu"), r"mesh\.rules='heads=gpu'")
    RunConfig.from_configdict(_with(digits_ddpm, mesh__data=2), 2, process_count=1)


def test_missing_text_encoder_weights():
    message = _refused(
        _with(digits_text_unet, text_encoder__path="/nonexistent/minilm"),
        r"text_encoder\.path='/nonexistent/minilm'",
    )
    assert "does not exist" in message and "config.json" in message
    _refused(
        _with(digits_text_unet, text_encoder__name="none"),
        r"text_encoder\.name='none' cannot encode conditioning\.kind='text'; allowed: clip",
    )
    _refused(
        _with(digits_text_unet, text_encoder__name="clip"),
        r"text_encoder\.path is empty; text_encoder\.name='clip' needs",
    )


def test_divisors_and_widths_of_the_networks():
    _refused(_with(digits_ddpm, model__num_groups=0), r"model\.num_groups=0 must be >= 1")
    _refused(_with(digits_ddpm, model__num_heads=0), r"model\.num_heads=0 must be >= 1")
    _refused(_with(digits_dit, model__mlp_ratio=1e308), r"model\.mlp_ratio=1e\+308 .*finite")


def test_sizes_allocated_before_training_are_bounded():
    _refused(
        _with(digits_ddpm, diffusion__num_timesteps=10**12),
        r"diffusion\.num_timesteps=10+ must be <= 100000",
    )
    _refused(
        _with(digits_ddpm, sampler__num_samples=10**6),
        r"sampler\.num_samples=1000000 must be in \[1, 65536\]",
    )
    _refused(_with(digits_ddpm, seed=2**64), r"seed=18446744073709551616 must be in \[0, 2\*\*63\)")
    _refused(
        _with(digits_dit, sampler__class_labels="99999999999"),
        r"sampler\.class_labels='99999999999': labels must be in \[0, 9\]",
    )


def test_flow_sampling_fields_are_checked_too():
    _refused(_with(digits_flow, sampler__num_samples=0), r"sampler\.num_samples=0 must be in \[1, ")
    _refused(_with(digits_flow, sampler__guidance_rescale=2.0), r"guidance_rescale=2\.0")
    _refused(_with(digits_flow, diffusion__flow_shift=0.0), r"diffusion\.flow_shift=0\.0")


def test_optimizer_moments_and_epsilon():
    _refused(_with(digits_ddpm, optimizer__b1=1.0), r"optimizer\.b1=1\.0 must be in \[0, 1\)")
    _refused(_with(digits_ddpm, optimizer__eps=-1e-8), r"optimizer\.eps=-1e-08 must be >= 0")
    _refused(_with(digits_ddpm, optimizer__weight_decay=-0.1), r"weight_decay=-0\.1")


def test_text_without_captions_needs_prompts():
    config = _with(
        digits_text_unet, data__name="tfds", data__tfds_name="coco_captions", data__text_key="t"
    )
    config.data.image_size = 8
    config.data.channels = 1
    _refused(config, r"sampler\.prompts='' is empty and data\.name='tfds' has no captions")
    config.sampler.prompts = "a cat;a dog"
    RunConfig.from_configdict(config, 8, process_count=1)


@pytest.mark.parametrize("module", [digits_ddpm, digits_dit])
def test_attention_impl_values_dtype_and_backend(module, monkeypatch):
    for impl in (None, "xla"):
        RunConfig.from_configdict(_with(module, model__attention_impl=impl), 8, process_count=1)
    _refused(
        _with(module, model__attention_impl="flash"),
        r"model\.attention_impl='flash' is not known; allowed: None, 'xla', 'cudnn'",
    )
    _refused(
        _with(module, model__attention_impl=1), r"model\.attention_impl=1 .*expected str or None"
    )
    _refused(
        _with(module, model__attention_impl="cudnn"),
        r"model\.dtype='float32' cannot run model\.attention_impl='cudnn'",
    )
    cudnn = _with(module, model__attention_impl="cudnn", model__dtype="bfloat16")
    _refused(cudnn, r"model\.attention_impl='cudnn' needs a GPU, but JAX's backend is 'cpu'")
    monkeypatch.setattr(config_checks.jax, "default_backend", lambda: "gpu")
    RunConfig.from_configdict(cudnn, 8, process_count=1)


def test_fast_path_switches_are_typed_and_bounded():
    _refused(_with(digits_ddpm, training__donate_state=1), r"training\.donate_state=1 .*bool")
    _refused(_with(digits_ddpm, data__device_prefetch=-1), r"data\.device_prefetch=-1 must be >= 0")
    _refused(_with(digits_ddpm, data__device_prefetch=1.0), r"data\.device_prefetch=1\.0 .*int")
    _refused(_with(digits_ddpm, compilation_cache_dir=None), r"compilation_cache_dir=None .*str")
    config = _with(digits_ddpm, training__donate_state=False, data__device_prefetch=0)
    config.compilation_cache_dir = "/tmp/jax_cache"
    RunConfig.from_configdict(config, 8, process_count=1)


def test_the_pallas_tpu_kernel_is_refused_off_tpu_before_anything_compiles(tiny_config):
    tiny_config.model.attention_impl = "pallas_tpu"
    run = RunConfig.from_configdict(tiny_config)  # --mode=compile builds it on any machine
    with pytest.raises(ConfigError, match=r"model.attention_impl='pallas_tpu'.*'cpu'"):
        config_checks.check_kernels_run_here(run)


def test_every_grid_of_the_eval_sweep_is_checked_before_anything_compiles(tmp_path):
    from diffusion import grids  # noqa: PLC0415
    from training import grid_files  # noqa: PLC0415

    schedule = RunConfig.from_configdict(digits_ddpm.get_config(), 8, 1).diffusion.make_schedule()
    levels = grids.log_snr_sigmas(*grids.train_sigmas(schedule)[[0, -1]], 6)
    good, wide = str(tmp_path / "a" / "good.json"), str(tmp_path / "wide.json")
    grid_files.write_grid(good, levels)
    grid_files.write_grid(wide, np.array([1e5, 1.0, 0.1]))
    ok = f"ddim@karras:5,10;dpmpp_2m@file:{good}:6;euler:5"
    RunConfig.from_configdict(_with(digits_ddpm, eval__sweep=ok), 8, process_count=1)
    refusals = {
        "ddim@cosine:5": r"names the grid 'cosine'; allowed: linspace, .*, edm, file:PATH\.",
        f"ddim@file:{tmp_path}/none.json:5": r"names the grid 'file:.*none\.json': .*not exist",
        f"ddim@file:{good}:5": r"asks 5 steps of 'ddim' on the grid file .* has 6 levels",
        f"ddim@file:{wide}:3": r"names 'file:.*wide\.json': grid sigmas span .* outside",
    }
    for sweep, match in refusals.items():
        _refused(_with(digits_ddpm, eval__sweep=sweep), r"eval\.sweep='.*' " + match)
    # The config's own grid file (no '@') holds sweep points to its level count as well.
    own = {"sampler__spacing": f"file:{good}", "sampler__num_steps": 6, "eval__sweep": "ddim:6,8"}
    _refused(_with(digits_ddpm, **own), r"asks 8 steps of 'ddim' on the grid file")
    grid_files.write_grid(str(tmp_path / "b" / "good.json"), levels)
    twins = f"ddim@file:{good}:6;ddim@file:{tmp_path}/b/good.json:6"
    _refused(_with(digits_ddpm, eval__sweep=twins), r"would share the name ddim@good")
    _refused(
        _with(digits_flow, eval__sweep="euler:5;heun@karras:5"),
        r"eval\.sweep=.* gives 'heun' the grid 'karras'; diffusion\.process='flow' takes flow "
        r"times .* drop the '@' part",
    )
