"""`config.grid_search`: the settings of --mode=optimize_grid (training/grid_run.py)."""

from __future__ import annotations

import dataclasses

from diffusion import grids, solvers
from schema import field, one_of, require


@dataclasses.dataclass(frozen=True)
class GridSearchConfig:
    """`config.grid_search`: how --mode=optimize_grid searches a grid for sampler.*."""

    reference_sampler: str = field("dpmpp_3m", "Sampler of the fine-step reference chain.")
    reference_steps: int = field(200, "Steps of the reference chain.")
    reference_spacing: str = field("logsnr", "Spacing of the reference chain.")
    starts: str = field(
        "logsnr,karras,trailing",
        "Comma-separated spacings the search starts from (each scored; the best result wins).",
    )
    max_evaluations: int = field(300, "Chains run by the search, all starts together.")
    output: str = field(
        "", "Grid file to write ('' = <workdir>/grids/<sampler>_<num_steps>.json)."
    )

    def validate(self) -> None:
        """Field-level checks (the sampler names against the process: check_grid_search)."""
        one_of("grid_search.reference_sampler", self.reference_sampler, solvers.SAMPLERS)
        require(
            self.reference_steps >= 1,
            "grid_search.reference_steps",
            self.reference_steps,
            "must be >= 1.",
        )
        one_of("grid_search.reference_spacing", self.reference_spacing, grids.SPACINGS)
        require(bool(self.start_spacings()), "grid_search.starts", self.starts, "is empty.")
        for spacing in self.start_spacings():
            one_of("grid_search.starts", spacing, grids.SPACINGS)
        require(
            self.max_evaluations >= 1,
            "grid_search.max_evaluations",
            self.max_evaluations,
            "must be >= 1.",
        )

    def start_spacings(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.starts.split(",") if s.strip())
