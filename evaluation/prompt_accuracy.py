"""Does the prompt pick the digit? Share of samples a real-digits classifier assigns to the prompt.

    python -m evaluation.prompt_accuracy --config=configs/digits_text_unet.py \\
        --workdir=runs/digits_text --guidance=0,1,3 --per_prompt=50

Samples `per_prompt` images for each of "a handwritten digit zero" .. "nine" (the data's caption
prompts) from the latest checkpoint at each guidance scale (one compiled chain for all scales),
prints a table, and writes the grid of the last scale (one row per prompt) under samples/. The
judge is the digits feature network (evaluation/digits_network.py), whose `accuracy` --mode=eval
reports for conditional digits models at the config's one guidance scale.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(  # unknown keys reach RunConfig's refusal, as in main.py
    "config",
    None,
    "A text- or class-conditional digits config.",
    lock_config=False,
    accept_new_attributes=True,
)
flags.DEFINE_string("workdir", None, "The run directory with checkpoints.")
flags.DEFINE_string("guidance", "0,1,3", "Comma-separated classifier-free guidance scales.")
flags.DEFINE_integer("per_prompt", 50, "Samples per prompt at each scale.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from evaluation import digits_network  # noqa: PLC0415
    from training import images, sample_run  # noqa: PLC0415

    config = FLAGS.config
    if config.data.name != "digits" or config.conditioning.kind == "none":
        raise app.UsageError("prompt_accuracy needs a conditional digits config.")
    with config.unlocked():
        config.sampler.num_samples = FLAGS.per_prompt
        config.sampler.prompts = ""  # the ten class prompts, in label order
        config.sampler.class_labels = ""
    experiment, state, sample_fn = sample_run.restore_sampler(config, FLAGS.workdir)
    network = digits_network.load()
    _, (held_out_images, held_out_labels) = digits_network.split_digits()
    held_out = digits_network.accuracy(network, held_out_images, held_out_labels)
    intended = experiment.sample_conditions.prompt_ids
    print(f"digits network's accuracy on held-out real digits: {held_out:.3f}")
    print(
        f"checkpoint step {int(jax.device_get(state.step))}, {FLAGS.per_prompt} per prompt, "
        f"{config.sampler.name} {config.sampler.num_steps} steps"
    )
    print("| guidance | share assigned to the prompted digit |\n|---:|---:|")
    for scale in (float(s) for s in FLAGS.guidance.split(",")):
        samples = sample_fn(state.ema_params, jax.random.key(config.seed), guidance_scale=scale)
        accuracy = digits_network.accuracy(network, digits_network.quantize(samples), intended)
        print(f"| {scale:g} | {accuracy:.3f} |", flush=True)
    shown = np.concatenate([samples[intended == p][:10] for p in range(10)])
    path = os.path.join(FLAGS.workdir, "samples", f"prompts_cfg{scale:g}.png")
    labels = experiment.sample_conditions.prompts  # prompt p's row is row p
    images.save_png(images.sample_grid(shown, num_rows=10, labels=labels), path)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
