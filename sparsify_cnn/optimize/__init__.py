"""The main jobs, one per technique: rewrite, choose masks or rates under an accuracy budget,
verify on held-out data, and return what the plan, the report and the compiler need."""

from .common import METRIC_CHOICES, one_class_warning, resolve_metric, save_rewritten
from .perforation import PerforationOutcome, optimize_perforation
from .spatial import OptimizeResult, optimize_spatial
from .ssc import SSCOutcome, optimize_ssc

__all__ = ["METRIC_CHOICES", "OptimizeResult", "PerforationOutcome", "SSCOutcome", "one_class_warning",
           "optimize_perforation", "optimize_spatial", "optimize_ssc", "resolve_metric", "save_rewritten"]  # fmt: skip
