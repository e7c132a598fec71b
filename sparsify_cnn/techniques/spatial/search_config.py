"""What a Spatial search takes (its config) and gives (its result and operating points)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...config import Config
from ...errors import InputError
from ...search.accuracy_budget import check_epsilon

MODES = ("uniform_layer", "uniform_filter", "uniform_patch", "max_granularity")
FIRST_LEVELS = ("exact", "first_order")


@dataclass(frozen=True)
class SearchConfig(Config):
    """How to search.

    epsilon: the largest accuracy loss allowed on the calibration split, absolute (0.01 = one
        point of accuracy) or relative to the dense accuracy.
    ones_range: allowed numbers of ones in a pattern (inclusive); None = all non-degenerate.
    granularity: side, in patches, of the clusters that form one target in the patch-level
        modes (0 = the whole map: max_granularity then equals uniform_patch).
    top_m: options of each target kept for the next level.
    exact_limit: uniform_layer searches every combination of layer options when there are at
        most this many.
    cost: what a layer option saves when layers are combined: "macs" (counted on the
        calibration data) or "measured" (the layer's compiled time, dense minus with the
        option's mask, on calibration activations; options that save no time are dropped).
    search_images: score each layer's options (first level and quantizer levels) on this many
        calibration images, a seeded sample; combining layers and the final check use every
        image, so the plan keeps epsilon on all of them. None = every image (the exact search).
    first_level: how the first level scores a (target, pattern): "exact" runs the network on
        the images it changes; "first_order" estimates each image's margin (its target logit
        less the highest other) to first order, from one gradient pass per layer, with no
        network run per option. The levels after it (for uniform_layer: the kept options,
        scored again) and combining layers run the network.
    max_risk: the most risk a layer option may have to be kept: the share of each image's margin
        (its target logit less the highest other) the option uses up, to first order, averaged
        over the per-layer images, an image estimated to flip counting 1. A per-layer budget
        stricter than epsilon that a sample can resolve below one image (see --search-images).
        None = no such budget.
    """

    mode: str = "uniform_filter"
    epsilon: float = 0.01
    epsilon_kind: str = "absolute"
    ones_range: tuple[int, int] | None = None
    granularity: int = 4
    top_m: int = 5
    exact_limit: int = 2048
    batch_size: int = 256
    cost: str = "macs"
    search_images: int | None = None
    first_level: str = "exact"
    max_risk: float | None = None
    version: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"unknown mode '{self.mode}'; choose one of: {', '.join(MODES)}")
        check_epsilon(self.epsilon, self.epsilon_kind)
        if self.cost not in ("macs", "measured"):
            raise InputError(f"cost must be macs or measured, got '{self.cost}'")
        if self.granularity < 0 or self.top_m < 1 or self.batch_size < 1:
            raise InputError("granularity must be >= 0, top-M and batch size >= 1")
        if self.first_level not in FIRST_LEVELS:
            raise InputError(f"first level must be one of {', '.join(FIRST_LEVELS)}, got '{self.first_level}'")
        if self.max_risk is not None and not 0 < self.max_risk <= 1:
            raise InputError(f"max risk must be in (0, 1], got {self.max_risk}")
        if self.search_images is not None and self.search_images < 1:
            raise InputError(f"search images must be >= 1, got {self.search_images}")
        if self.ones_range is not None:
            low, high = self.ones_range
            if low > high or high < 1:
                raise InputError(f"ones range {low}-{high} is empty")
            object.__setattr__(self, "ones_range", (int(low), int(high)))


@dataclass(frozen=True)
class OperatingPoint:
    """A whole-network state the search evaluated."""

    step: str
    accuracy: float
    macs_saved: float
    masks: tuple[tuple[str, int], ...]  # (layer, option rank) of the state


@dataclass
class SearchResult:
    masks: dict[str, torch.Tensor]  # layer -> full mask (C, Hp, Wp)
    dense_accuracy: float
    accuracy: float  # calibration, whole network, final masks
    macs_saved: float  # per image, measured on calibration data
    points: list[OperatingPoint] = field(default_factory=list)
    options: int = 0  # options the seed's algorithm would simulate (its Omega)
    candidates: int = 0  # options this search evaluated (the rest were settled by bounds)
    suffix_images: int = 0
    full_passes: int = 0
    work: float = 0.0  # image forward passes, suffixes weighted by their share of MACs
    seconds: float = 0.0
    ranks: int = 1  # processes the calibration images were shared by (torchrun)
    search_images: int = 0  # calibration images the per-layer levels were scored on
    cache: dict = field(default_factory=dict)  # the dense cache: peak bytes per rank, layer groups, recording passes
    phases: dict[str, float] = field(default_factory=dict)  # seconds per search level

    @property
    def work_ratio(self) -> float:
        """Work done over the seed's Omega x F (both in whole-network passes over the data)."""
        return self.work / self.options if self.options else 0.0
