"""`config.eval`: how --mode=eval, --mode=eval_stats and in-loop evaluation measure samples."""

from __future__ import annotations

import dataclasses
import os

from schema import field, one_of, require

FEATURE_NETWORKS = ("auto", "inception", "digits")  # auto: digits for data.name='digits'
MAX_EVAL_SAMPLES = 1_000_000


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One (sampler, step count, step grid) of `eval.sweep`."""

    sampler: str
    num_steps: int
    spacing: str = ""  # a sampler.spacing rule or 'file:PATH'; '' = the config's sampler.spacing


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`config.eval`: sample counts, the feature network, reference statistics, sweeps."""

    num_samples: int = field(
        50_000, "Images drawn by --mode=eval (50,000 as papers report FID; chunks of batch_size)."
    )
    batch_size: int = field(
        1000, "Images sampled and featurised per chunk (sharded over every device)."
    )
    in_loop_num_samples: int = field(
        1000, "Images per in-loop evaluation (eval_every_steps): a cheaper, noisier estimate."
    )
    feature_network: str = field(
        "auto", "'inception' (FID Inception, needs inception_weights) | 'digits' | 'auto'."
    )
    inception_weights: str = field(
        "",
        "Converted pytorch-fid Inception weights (.safetensors); '' = stats_dir/"
        "pt_inception-2015-12-05.safetensors. See docs/EVALUATION.md.",
    )
    stats_dir: str = field(
        "",
        "Where reference statistics are written and read ('' = ~/.cache/diffusion_eval).",
    )
    reference_split: str = field("", "Data split the reference statistics cover ('' = data.split).")
    keep_features: bool = field(
        True,
        "Keep every feature vector on the host for KID and precision/recall (50k x 2048 float32 "
        "= 400 MB); False computes FID (streamed moments) and IS only.",
    )
    kid_subsets: int = field(100, "KID: number of random subsets (torch-fidelity's default).")
    kid_subset_size: int = field(
        1000, "KID: samples per subset (capped at the smaller sample count)."
    )
    pr_neighbourhood: int = field(3, "Precision/recall: k of the k-NN radii (Kynkaanniemi 2019).")
    is_splits: int = field(10, "Inception Score: splits for its mean and std.")
    clip_model: str = field(
        "",
        "Text-conditioned models: a Hugging Face CLIPModel directory; adds clip_score "
        "(100 * cos(image, prompt), torchmetrics' convention) to every evaluation.",
    )
    seed: int = field(0, "Seeds the noise and labels of evaluation samples (and KID subsets).")
    sweep: str = field(
        "",
        "Samplers, step grids and step counts evaluated in one --mode=eval run, "
        "'sampler[@spacing]:steps,...;...', e.g. 'ddim:10,20,50;dpmpp_2m@karras:10,20;"
        "dpmpp_3m@file:grids/dpmpp_3m_10.json:10' (spacing as sampler.spacing, default "
        "sampler.spacing; a file: grid takes its level count); the run ends with the best "
        "sampler and grid per NFE. '' = just sampler.name at sampler.num_steps.",
    )

    def validate(self) -> None:
        """Field-level checks (the sweep's sampler names are checked against the process later)."""
        for name in ("num_samples", "in_loop_num_samples"):
            value = getattr(self, name)
            require(
                2 <= value <= MAX_EVAL_SAMPLES,
                f"eval.{name}",
                value,
                f"must be in [2, {MAX_EVAL_SAMPLES}] (a covariance needs two samples).",
            )
        require(self.batch_size >= 1, "eval.batch_size", self.batch_size, "must be >= 1.")
        one_of("eval.feature_network", self.feature_network, FEATURE_NETWORKS)
        require(self.kid_subsets >= 1, "eval.kid_subsets", self.kid_subsets, "must be >= 1.")
        require(
            self.kid_subset_size >= 2,
            "eval.kid_subset_size",
            self.kid_subset_size,
            "must be >= 2.",
        )
        require(
            self.pr_neighbourhood >= 1,
            "eval.pr_neighbourhood",
            self.pr_neighbourhood,
            "must be >= 1.",
        )
        require(self.is_splits >= 1, "eval.is_splits", self.is_splits, "must be >= 1.")
        require(0 <= self.seed < 2**63, "eval.seed", self.seed, "must be in [0, 2**63).")
        self.sweep_points("")  # raises on a malformed sweep

    def sweep_points(self, sampler: str, num_steps: int = 0) -> tuple[SweepPoint, ...]:
        """The (sampler, steps, spacing) points to evaluate: the sweep, or the config's own
        sampler. The step counts follow the last ':' (a 'file:PATH' spacing has one too)."""
        if not self.sweep.strip():
            return (SweepPoint(sampler, num_steps),)
        points = []
        for part in filter(None, (p.strip() for p in self.sweep.split(";"))):
            head, _, counts = part.rpartition(":")
            name, at, spacing = (s.strip() for s in head.partition("@"))
            steps = [c.strip() for c in counts.split(",") if c.strip()]
            require(
                bool(name)
                and (bool(spacing) or not at)
                and bool(steps)
                and all(c.isdigit() and int(c) > 0 for c in steps),
                "eval.sweep",
                self.sweep,
                "must look like 'ddim:10,20,50;dpmpp_2m@karras:10,20' (sampler[@spacing]:"
                "positive step counts; spacing a sampler.spacing rule or file:PATH).",
            )
            points.extend(SweepPoint(name, int(c), spacing) for c in steps)
        return tuple(points)

    def network_name(self, dataset: str) -> str:
        """The feature network this run measures with ('auto' resolved by data set)."""
        if self.feature_network != "auto":
            return self.feature_network
        return "digits" if dataset == "digits" else "inception"

    def resolved_stats_dir(self) -> str:
        """stats_dir with its default filled in."""
        return self.stats_dir or os.path.join(os.path.expanduser("~"), ".cache", "diffusion_eval")

    def inception_path(self) -> str:
        """The converted Inception weights file this config reads."""
        return self.inception_weights or os.path.join(
            self.resolved_stats_dir(), "pt_inception-2015-12-05.safetensors"
        )
