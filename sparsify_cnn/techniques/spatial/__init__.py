"""Zero prediction (Spatial ops): compute the activations a p x p mask marks and predict the rest
of the patch zero when those are zero after ReLU.

``op`` the Spatial op, ``rewrite`` its pass, ``search_config``/``search``/``evaluator`` the mask
search in four modes, ``job`` the main job, ``report``, ``lowering`` its TVM kernel, ``cli`` its
options of the main job."""

from ...plan_schema import INT, NAME, NAMES, VERSION
from ...technique import Technique, register
from . import cli

TECHNIQUE = register(Technique(
    name="spatial",
    summary="zero prediction with Spatial ops",
    options=cli.OPTIONS,
    shared_options=cli.SHARED,
    config_schema={"patch_size": INT, "edge": NAME, "channel_group": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
                   "layers": NAMES, "version": VERSION},
    run=f"{__name__}.cli:run",
    apply_plan=f"{__name__}.rewrite:apply_plan",
    summary_line=f"{__name__}.cli:summary_line",
    distributed=True,
))  # fmt: skip
