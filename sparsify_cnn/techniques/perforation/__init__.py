"""Perforated convolutions: evaluate only some output positions of a conv and interpolate the
rest.

``op`` the perforated conv, ``rewrite`` its pass, ``masks`` the four mask types, ``search`` the
greedy rate search, ``job`` the main job, ``report``, ``lowering`` its TVM kernel, ``cli`` its
options of the main job."""

from ...plan_schema import INT, NAME, NAMES, VERSION
from ...technique import Technique, register
from . import cli

TECHNIQUE = register(Technique(
    name="perforation",
    summary="perforated convs",
    options=cli.OPTIONS,
    shared_options=cli.SHARED,
    config_schema={"interpolation": NAME, "layers": NAMES, "seed": INT, "version": VERSION},
    run=f"{__name__}.cli:run",
    apply_plan=f"{__name__}.rewrite:apply_plan",
    summary_line=f"{__name__}.cli:summary_line",
    distributed=True,
))  # fmt: skip
