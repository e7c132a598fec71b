"""Options shared by several commands, defined once. Validation happens in callbacks so that
bad values are usage errors (exit code 2) before any work starts."""

from __future__ import annotations

import functools
import math

import click

from ..option_types import Bounded

SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit
OPTIMIZER_MAX = 1e38  # lr, momentum, weight decay: torch's optimizers convert them to float32 (max 3.4e38)
MAX_INPUT_ELEMENTS = 2**30  # N*C*H*W of --input-shape: 4 GiB of float32 per batch


def _shape(ctx, param, value):
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a list of integers such as 1,3,32,32") from None
    if len(shape) != 4 or min(shape) < 1:
        raise click.BadParameter(f"'{value}' must be four positive integers N,C,H,W")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise click.BadParameter(f"'{value}' is {math.prod(shape):,} values per batch; at most {MAX_INPUT_ELEMENTS:,}")
    return shape


def model_options(command):
    """MODEL plus the options that say how to load and capture it."""
    decorators = [
        click.argument("model"),
        click.option(
            "--arch",
            metavar="MODULE:FACTORY",
            help="Architecture of a state-dict MODEL: package.module:factory, or zoo:NAME.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow MODEL files that unpickle Python objects (this runs code from the file).",
        ),
        click.option(
            "--input-shape",
            callback=_shape,
            metavar="N,C,H,W",
            help="Input shape; default: from the model file, the zoo entry or the data.",
        ),
        click.option(
            "--leaf",
            "leaf_modules",
            multiple=True,
            metavar="NAME",
            help="Module class or path that tracing keeps whole (repeatable).",
        ),
        click.option(
            "--capture",
            "capture_method",
            type=click.Choice(["auto", "fx", "export"]),
            default="auto",
            show_default=True,
            help="How to capture the graph: torch.fx, torch.export, or fx falling back to export.",
        ),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), command)


def target_callback(ctx, param, value):
    """--target: llvm, llvm:CPU or cuda:sm_XX, checked for form here; TVM checks the CPU name
    when it builds."""
    import re

    from ..codegen.target import CUDA_ARCH

    kind, colon, detail = value.partition(":")
    if kind == "llvm" and (not colon or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", detail)):
        return value
    if kind == "cuda" and (not colon or CUDA_ARCH.match(detail)):
        return value
    raise click.BadParameter(f"'{value[:80]}' is not llvm, llvm:CPU or cuda:sm_XX (such as cuda:sm_90)")


def target_or_none_callback(ctx, param, value):
    """--target as ``target_callback``, or ``none``."""
    return value if value == "none" else target_callback(ctx, param, value)


def _normalize(ctx, param, value):
    if value is None:
        return None
    from ..data import parse_normalization

    try:
        return parse_normalization(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def data_option(default: str | None):
    """--data, and --normalize for what the data's images are scaled to."""
    data = click.option(
        "--data",
        default=default,
        show_default=True,
        help="'digits' (built in), an .npz file with arrays x and y, or an image folder (scaled to [0, 1]).",
    )
    normalize = click.option(
        "--normalize",
        callback=_normalize,
        metavar="MEAN,STD",
        help="Normalise the images as the model expects: x -> (x - MEAN) / STD, one number or one per channel "
        "joined by ':' (0.485:0.456:0.406,0.229:0.224:0.225), or 'imagenet' for those.",
    )
    return lambda command: data(normalize(command))


seed_option = click.option("--seed", type=Bounded(int, 0, SEED_MAX), default=0, show_default=True,
                           help=f"Seed for data splits and initial weights (0..{SEED_MAX}).")  # fmt: skip
