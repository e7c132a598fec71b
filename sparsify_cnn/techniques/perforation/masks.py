"""Perforation masks (Figurnov et al., NIPS 2016, section 3.2): which output positions of a
conv are computed, for a kept fraction q of its H' x W' map.

Four types. **uniform**: random positions. **grid**: a randomly shifted regular grid.
**pooling**: the positions covered by the most windows of the next pooling layer (an error
there is copied into several pooled values). **impact**: the positions whose removal changes
the loss most, by a first-order estimate, are kept. Score-based types keep the top positions
of fixed scores, so lowering q only removes positions (masks are nested); grid masks are not.

Example::

    windows = find_next_pooling(gm, layer.node)  # sparsify_cnn.transform.match
    mask = kept_mask("pooling", (16, 16), 1 / 4, pooling=windows)  # 64 positions kept
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...distributed import SINGLE, World
from .op import PerforatedConv

MASK_TYPES = ("uniform", "grid", "pooling", "impact")
# The authors' rates: kept fraction 1, 2/3, 1/2, 1/3, ..., 1/20.
KEPT_FRACTIONS = (1.0, 2 / 3, *(1 / k for k in range(2, 21)))
LOSSES = ("cross_entropy", "kl")
# Grid shifts u are multiples of 2**-20, so grid indices are exact integers.
_GRID_STEPS = 2**20


def kept_count(positions: int, q: float) -> int:
    """How many of ``positions`` a kept fraction ``q`` keeps: floor(q * positions), at least 1.

    >>> kept_count(16, 1 / 20)
    1
    """
    _check_fraction(q)
    # q is a float: 1e-9 keeps 0.29 of 100 at 29 (0.29 * 100 is 28.999...).
    return max(1, math.floor(q * positions + 1e-9))


def kept_mask(
    kind: str,
    out_hw: Sequence[int],
    q: float,
    scores: torch.Tensor | None = None,
    pooling: Sequence | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The (H', W') bool mask of kept positions of a ``kind`` mask at kept fraction ``q``.

    ``pooling`` (for "pooling") is the next pooling layer's windows, as
    :func:`~sparsify_cnn.transform.match.find_next_pooling` returns them or a plain
    ``(kernel, stride, padding)``; ``scores`` (for "impact") is an (H', W') tensor, e.g. one
    of :func:`impact_scores`. ``seed`` draws uniform scores, grid shifts and tie breaks.
    """
    h, w = _check_hw(out_hw)
    if kind not in MASK_TYPES:
        raise ValueError(
            f"unknown perforation mask type '{kind}'; choose one of: {', '.join(MASK_TYPES)}"
        )
    if kind == "grid":
        return grid_mask((h, w), q, seed)
    if kind == "uniform":
        scores = torch.rand(
            (h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
    elif kind == "pooling":
        if pooling is None:
            raise ValueError(
                "pooling structure masks need the next pooling layer's windows; this conv reaches none"
            )
        scores = pooling_scores((h, w), *pooling)
    elif scores is None or tuple(scores.shape) != (h, w):
        got = "none" if scores is None else f"shape {tuple(scores.shape)}"
        raise ValueError(f"impact masks need (H', W') = ({h}, {w}) scores, got {got}")
    return top_positions(scores, kept_count(h * w, q), seed)


def top_positions(scores: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """A bool mask of the ``count`` highest ``scores``; equal scores are ordered at random
    (seeded), so the same scores and seed give nested masks as ``count`` falls."""
    flat = scores.detach().flatten().cpu()
    shuffle = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))
    order = shuffle[torch.sort(flat[shuffle], descending=True, stable=True).indices]
    mask = torch.zeros(len(flat), dtype=torch.bool)
    mask[order[:count]] = True
    return mask.view(scores.shape)


def grid_mask(out_hw: Sequence[int], q: float, seed: int = 0) -> torch.Tensor:
    """A randomly shifted n_h x n_w grid of kept positions (the paper's grid mask).

    The paper puts n = floor(sqrt(q H'W')) points on each axis, at ceil((H'/n)(i + u)) for
    i = 0..n-1 and u ~ U[0, 1) (rows and columns each draw their u), and keeps their product.
    Here indices are 0-based: floor((H'/n)(i + u)), the same point of the same cell (the
    two differ only where (H'/n)(i + u) is an integer, where ceil - 1 could reach -1). Point i
    lies in cell [i H'/n, (i+1) H'/n), so indices stay in 0..H'-1 and are distinct, one per
    cell. Non-square maps get n_h = floor(sqrt(q H'W') sqrt(H'/W')) rows and n_w likewise,
    keeping the cells square; on square maps that is the paper's n. The count is n_h n_w
    (at least 1 x 1), not floor(q H'W').
    """
    h, w = _check_hw(out_hw)
    _check_fraction(q)
    root = math.sqrt(q * h * w)  # + 1e-9 below: sqrt(441 / 9) is 6.999...
    n_h = min(h, max(1, math.floor(root * math.sqrt(h / w) + 1e-9)))
    n_w = min(w, max(1, math.floor(root * math.sqrt(w / h) + 1e-9)))
    shifts = torch.randint(
        _GRID_STEPS, (2,), generator=torch.Generator().manual_seed(seed)
    )
    rows, cols = _grid_axis(h, n_h, int(shifts[0])), _grid_axis(w, n_w, int(shifts[1]))
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[rows[:, None], cols[None, :]] = True
    return mask


def _grid_axis(size: int, n: int, shift: int) -> torch.Tensor:
    """floor((size / n)(i + u)) for u = shift / _GRID_STEPS, in exact integer arithmetic."""
    i = torch.arange(n, dtype=torch.int64)
    return (size * (i * _GRID_STEPS + shift)) // (n * _GRID_STEPS)


def pooling_scores(
    out_hw: Sequence[int],
    kernel: Sequence[int] | int,
    stride: Sequence[int] | int,
    padding: Sequence[int] | int = 0,
    dilation: Sequence[int] | int = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """How many windows of a pooling layer (PyTorch's window rules) cover each position of an
    (H', W') map, as a float tensor. A window covers a position when its row and its column
    ranges both do, so the count is the product of per-axis counts.

    >>> pooling_scores((4, 4), 3, 2, 1)[0].tolist()  # windows at rows -1..1 and 1..3
    [1.0, 2.0, 1.0, 1.0]
    """
    h, w = _check_hw(out_hw)
    axes = [_pair(v) for v in (kernel, stride, padding, dilation)]
    rows, cols = (
        _axis_coverage(size, *(v[a] for v in axes), ceil_mode)
        for a, size in enumerate((h, w))
    )
    return rows[:, None].double() * cols[None, :].double()


def _axis_coverage(
    size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
) -> torch.Tensor:
    span = dilation * (kernel - 1) + 1
    windows = (
        size + 2 * padding - span + (stride - 1 if ceil_mode else 0)
    ) // stride + 1
    if ceil_mode and (windows - 1) * stride >= size + padding:
        windows -= (
            1  # as PyTorch: the last window starts in the map or its left padding
        )
    if windows < 1 or kernel < 1 or stride < 1 or padding < 0:
        raise ValueError(
            f"a pooling window of kernel {kernel}, stride {stride}, padding {padding} does not fit a map of {size}"
        )
    starts = torch.arange(windows) * stride - padding
    covered = starts[:, None] + dilation * torch.arange(kernel)[None, :]
    covered = covered[(covered >= 0) & (covered < size)]
    return torch.bincount(covered, minlength=size)


def impact_scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss: str = "cross_entropy",
    batch_size: int = 64,
    world: World = SINGLE,
) -> dict[str, torch.Tensor]:
    """The impact of every output position of every :class:`PerforatedConv` in ``model``:
    mean over ``images`` of sum over channels of |V dL/dV|, V the op's output (the conv's
    pre-activation map, interpolated where positions are already perforated), L the loss of
    one image. Returns layer name -> (H', W') float tensor on the CPU.

    ``loss="cross_entropy"``: ``targets`` are class labels (N,); for label-free data, the dense
    model's top-1 predictions. ``loss="kl"``: ``targets`` are the dense model's logits (N, K)
    and L = KL(dense || model). Its gradient vanishes where the model equals the dense model,
    so on an unperforated network every score is zero: use it once layers are perforated.

    Scores come from eval mode; ``model``'s modes and parameters are left as found (input
    gradients drive the backward pass, so ``requires_grad`` and ``.grad`` are untouched).
    With a ``world`` of several ranks, ``images`` are this rank's share: the sums are over
    every rank's images. Example::

        scores = impact_scores(gm, calib_x, calib_y)
        mask = kept_mask("impact", scores["conv2"].shape, 1 / 3, scores=scores["conv2"])
    """
    _check_targets(images, targets, loss)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    ops = {
        module.layer_name or path: module
        for path, module in model.named_modules()
        if isinstance(module, PerforatedConv)
    }
    if not ops:
        return {}
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        op.register_forward_hook(_recorder(outputs, name)) for name, op in ops.items()
    ]
    modes = {module: module.training for module in model.modules()}
    device = next((p.device for p in model.parameters()), images.device)
    totals = {
        name: torch.zeros(op.out_hw, dtype=torch.float64) for name, op in ops.items()
    }
    try:
        for module in model.modules():
            module.training = (
                False  # eval(), which exported graphs refuse (the flag is harmless)
            )
        for start in range(0, len(images), batch_size):
            batch = slice(start, start + batch_size)
            outputs.clear()
            impacts = _batch_impact(
                model,
                images[batch].to(device),
                targets[batch].to(device),
                loss,
                outputs,
            )
            if len(outputs) != len(ops):
                missing = next(name for name in ops if name not in outputs)
                raise ValueError(
                    f"perforated conv '{missing}' did not run in the forward pass"
                )
            for name, impact in impacts.items():
                totals[name] += impact
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    count = world.count(len(images))
    return {name: (world.sum(total) / count).float() for name, total in totals.items()}


def _recorder(outputs: dict[str, torch.Tensor], name: str):
    """A forward hook that records an op's output V in ``outputs[name]``."""

    def hook(module, args, output):
        if name in outputs:
            raise ValueError(
                f"perforated conv '{name}' runs more than once per forward pass"
            )
        outputs[name] = output
        return (
            output.clone()
        )  # for the rest of the network: in-place ops must not change V

    return hook


def _batch_impact(model, x, targets, loss, outputs) -> dict[str, torch.Tensor]:
    """Sum over images and channels of |V dL/dV| for every op output the forward records."""
    with torch.enable_grad():
        # Gradients flow from the input, so parameters need not require them.
        logits = model(x.detach().requires_grad_(True))
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        names = list(outputs)
        value = _loss(logits, targets, loss)
        grads = torch.autograd.grad(
            value, [outputs[n] for n in names], allow_unused=True
        )
    return {
        name: (outputs[name].detach() * grad).abs().sum(dim=(0, 1)).double().cpu()
        for name, grad in zip(names, grads)
        if grad is not None  # the loss does not depend on this op
    }


def _loss(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """The summed per-image loss, so dL/dV of an image is that of its own loss."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits, targets, reduction="sum")
    log_dense = F.log_softmax(targets.to(logits.dtype), dim=1)
    return F.kl_div(
        F.log_softmax(logits, dim=1), log_dense, reduction="sum", log_target=True
    )


def _check_targets(images: torch.Tensor, targets: torch.Tensor, loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(
            f"unknown impact loss '{loss}'; choose one of: {', '.join(LOSSES)}"
        )
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if loss == "cross_entropy" and (targets.dim() != 1 or targets.is_floating_point()):
        raise ValueError(
            f"cross-entropy impact needs integer labels (N,), got {targets.dtype} {tuple(targets.shape)}"
        )
    if loss == "kl" and (targets.dim() != 2 or not targets.is_floating_point()):
        raise ValueError(
            f"KL impact needs the dense model's logits (N, K), got {targets.dtype} {tuple(targets.shape)}"
        )


def _check_fraction(q: float) -> None:
    if not 0 < q <= 1:
        raise ValueError(f"the kept fraction must be in (0, 1], got {q}")


def _check_hw(out_hw: Sequence[int]) -> tuple[int, int]:
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ValueError(
            f"an output map size is two positive integers (H', W'), got {tuple(out_hw)}"
        )
    return int(out_hw[0]), int(out_hw[1])


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)
