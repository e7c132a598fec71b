"""Structured sparse convolutions (SSC): a k x k conv becomes a group k x k conv plus a group
pointwise conv, with per-layer (g, p).

``op`` the SSC layer, ``choices`` what a (g, p) assignment is, ``presets`` the seed's tables,
``budget`` (g, p) for a parameter target, ``rewrite`` the pass, ``job`` the main job, ``report``,
``cli`` its options of the main job. Its grouped convs lower through TVM's own ops."""

from ...plan_schema import GROUP, NAME, NAMES, VERSION
from ...technique import Technique, register
from . import cli

TECHNIQUE = register(Technique(
    name="ssc",
    summary="structured sparse convs",
    options=cli.OPTIONS,
    shared_options=cli.SHARED,
    config_schema={
        "per_layer": {"type": "array", "maxItems": 1 << 16,
                      "items": {"type": "array", "prefixItems": [NAME, GROUP, GROUP], "minItems": 3, "maxItems": 3}},
        "preset": {"type": ["string", "null"], "maxLength": 256},
        "target_fraction": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "pointwise_branch": {"type": "boolean"},
        "pointwise_convs": {"type": "boolean"},
        "nondividing": NAME,
        "init": NAME,
        "layers": NAMES,
        "version": VERSION,
    },
    run=f"{__name__}.cli:run",
    apply_plan=f"{__name__}.rewrite:apply_plan",
    summary_line=f"{__name__}.cli:summary_line",
    check_options=f"{__name__}.cli:check_options",
    checkpoint_name="train-checkpoint.pt",
    checkpoint_kind="training",
))  # fmt: skip
