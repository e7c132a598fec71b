"""The STAN conv: a conv layer that, while training, follows the epoch schedule.

- dense epochs: the conv as usual;
- entry-matrix epochs: the conv as usual, and E records which outputs are <= theta (STAN: and
  their values) for the samples of the batch;
- skipping epochs: covered outputs are not computed; they take the stored value (STAN) or 0
  (STAN-lite). The backward pass is the dense conv's in every epoch (the seed's code does the
  same): gradients flow as if the output had been computed.

Kernels for the skipping forward (``kernel``), measured on a 2-core CPU in the README:

- ``compiled``: computes exactly the uncovered entries, each as its own SIMD dot product, in a
  TVM-compiled CPU kernel (``compiled.py``); its time follows the entries left;
- ``positions``: gathers the input windows of the output positions where some channel is
  uncovered and computes them in one GEMM; positions covered in every channel are never
  computed, covered entries of computed positions are overwritten;
- ``channels``: per output channel, gathers the windows of its uncovered outputs only (the
  strict form in torch: each channel is a matrix-vector product);
- ``dense``: computes everything, then writes the covered entries (the reference semantics);
- ``auto`` (the default): per layer and skipping epoch, ``compiled`` where it beat the dense
  conv in ``benchmarks/stan_kernel.py``: at least ``AUTO_MIN_REDUCTION`` multiply-adds per
  output (below, the per-entry bookkeeping costs as much as computing the entry: a first conv
  over 3 channels never won) and at least ``AUTO_MIN_COVERAGE`` of the layer covered in the
  last entry-matrix epoch; ``dense`` otherwise. A rule rather than a timed trial: the kernels
  round differently, and a choice that followed the machine's load would make training
  irreproducible.

In eval mode the module is the plain conv.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.base import conv_padding
from .entry import EntryStore
from .schedule import BUILD, DENSE, SKIP

KERNELS = ("compiled", "positions", "channels", "dense", "auto")
AUTO_MIN_REDUCTION = 256  # kh * kw * C_in
AUTO_MIN_COVERAGE = 0.5
_QUANTILE_SAMPLE = 1 << 16  # entries sampled per batch to place a coverage quantile


@dataclass
class LayerStats:
    """What one layer did in the current epoch: seconds and entry counts."""

    forward: float = 0.0  # conv forward (dense epochs, entry-matrix epochs without building E)
    entry: float = 0.0  # building E: threshold, comparison, store
    skip: float = 0.0  # skipping forward: reading E and the sparse-output conv
    backward: float = 0.0
    entries: int = 0  # outputs seen (build and skip epochs)
    covered: int = 0  # of which covered
    computed: int = 0  # outputs computed (skip epochs: what the kernel did not skip)
    theta_sum: float = 0.0
    batches: int = 0
    kernel: str = ""  # the skipping kernel used (auto: the one chosen)


@dataclass
class StanContext:
    """What the STAN convs of one model share: the epoch kind, the sample ids of the batch, E,
    the threshold rule and per-layer statistics. The trainer sets ``kind`` and ``ids``."""

    store: EntryStore
    theta: float | None = 0.0  # absolute threshold, or
    coverage: float | None = None  # target coverage: theta is that quantile of each batch
    kernel: str = "auto"
    seed: int = 0
    kind: str = DENSE
    ids: torch.Tensor | None = None
    clock: Callable[[], float] = time.perf_counter  # time.thread_time: CPU seconds, blind to other load
    stats: dict[str, LayerStats] = field(default_factory=lambda: defaultdict(LayerStats))

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def take_stats(self) -> dict[str, LayerStats]:
        """The statistics gathered since the last call (one epoch), reset."""
        stats, self.stats = dict(self.stats), defaultdict(LayerStats)
        return stats

    def threshold(self, out: torch.Tensor) -> float:
        if self.coverage is None:
            return self.theta
        flat = out.detach().reshape(-1)
        if flat.numel() > _QUANTILE_SAMPLE:
            flat = flat[torch.randint(flat.numel(), (_QUANTILE_SAMPLE,), generator=self.generator)]
        return float(torch.quantile(flat, self.coverage))


class StanConv(nn.Module):
    """A 2-D conv (groups 1, zero padding) under STAN. ``layer_name`` keys its rows of E."""

    def __init__(self, conv: nn.Conv2d, layer_name: str, context: StanContext):
        super().__init__()
        self.conv = conv
        self.layer_name = layer_name
        self.context = context
        self.padding = conv_padding(conv)
        self.built = [0, 0]  # covered and seen entries of the last entry-matrix epoch
        self.phase = DENSE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.conv(x)
        return _StanConvFunction.apply(x, self.conv.weight, self.conv.bias, self)

    def extra_repr(self) -> str:
        return f"layer_name={self.layer_name!r}, kernel={self.context.kernel!r}"

    def dense(self, x, weight, bias) -> torch.Tensor:
        conv = self.conv
        return F.conv2d(x, weight, bias, conv.stride, self.padding, conv.dilation, conv.groups)

    def choose(self, weight: torch.Tensor) -> str:
        """``auto``'s kernel for this layer in this skipping epoch."""
        coverage = self.built[0] / self.built[1] if self.built[1] else 0.0
        return "compiled" if weight[0].numel() >= AUTO_MIN_REDUCTION and coverage >= AUTO_MIN_COVERAGE else "dense"

    def read(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(covered, values) of this batch's samples, (B, H', W', T): ``EntryStore.read``."""
        return self.context.store.read(self.layer_name, self.context.ids)

    def run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The training forward for the context's epoch kind (timed)."""
        context, stats = self.context, self.context.stats[self.layer_name]
        clock = context.clock
        start = clock()
        if context.kind != SKIP:
            out = self.dense(x, weight, bias)
            built = clock()
            stats.forward += built - start
            if context.kind == BUILD:
                theta = context.threshold(out)
                covered = context.store.write(self.layer_name, context.ids, out, theta)
                stats.entry += clock() - built
                if self.phase != BUILD:  # a new entry matrix
                    self.built = [0, 0]
                self.built = [self.built[0] + covered, self.built[1] + out.numel()]
                stats.covered += covered
                stats.entries += out.numel()
                stats.theta_sum += theta
                stats.batches += 1
            self.phase = context.kind
            return out
        self.phase = SKIP
        kernel = stats.kernel or context.kernel
        if kernel == "auto":
            kernel = self.choose(weight)
        if kernel == "compiled" and not stats.kernel:  # built once per process and layer shape: in the
            prepare(self, x, weight)  # epoch's time, not in t_skip
            start = clock()
        out, computed = _KERNELS[kernel](self, x, weight, bias)
        stats.kernel = kernel
        stats.skip += clock() - start
        stats.entries += out.numel()
        stats.computed += computed
        return out


class _StanConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, op: StanConv):
        ctx.save_for_backward(x, weight)
        ctx.op, ctx.has_bias = op, bias is not None
        return op.run(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        op = ctx.op
        conv = op.conv
        start = op.context.clock()
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None,
            list(conv.stride), list(op.padding), list(conv.dilation), False, [0, 0], conv.groups, mask,
        )  # fmt: skip
        op.context.stats[op.layer_name].backward += op.context.clock() - start
        return grad_x, grad_w, grad_b if ctx.has_bias else None, None


class Windows:
    """The input windows of chosen output positions, gathered as rows of a (P, kh * kw * C) matrix.

    The padded input is made channels-last once; then a window row (kw pixels of C channels) is
    one contiguous run, so gathering P windows is P * kh row copies (``index_select``) rather
    than an element-wise gather. ``matrix`` is the weight in the same (kh, kw, C) order.
    """

    def __init__(self, op: StanConv, x: torch.Tensor, weight: torch.Tensor):
        conv = op.conv
        (ph, pw), self.stride, self.dilation = op.padding, conv.stride, conv.dilation
        self.kh, self.kw = conv.kernel_size
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        self.xp = xp.permute(0, 2, 3, 1).contiguous()  # (B, Hp, Wp, C)
        _, self.hp, self.wp, self.c = self.xp.shape
        dh, dw = self.dilation
        self.ho = (self.hp - dh * (self.kh - 1) - 1) // self.stride[0] + 1
        self.wo = (self.wp - dw * (self.kw - 1) - 1) // self.stride[1] + 1
        self.matrix = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
        if dw == 1:  # row r: the kw pixels from flat pixel r on
            self.runs = self.xp.view(-1).unfold(0, self.kw * self.c, self.c)
            self.offsets = torch.arange(self.kh) * dh * self.wp
        else:  # one pixel per row
            self.runs = self.xp.view(-1, self.c)
            self.offsets = (torch.arange(self.kh)[:, None] * dh * self.wp + torch.arange(self.kw) * dw).view(-1)

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """Windows of flat output positions (over B, H', W'), as (P, kh * kw * C)."""
        per_image = self.ho * self.wo
        n, rest = positions // per_image, positions % per_image
        first = (n * self.hp + rest // self.wo * self.stride[0]) * self.wp + rest % self.wo * self.stride[1]
        rows = (first[:, None] + self.offsets).view(-1)
        return self.runs.index_select(0, rows).view(len(positions), -1)


# Arithmetic instead of torch.where / masked_fill: on CPU those are several times slower on
# boolean masks of this size. Stored values are finite, so 0 * value is 0.
def _keep(res: torch.Tensor, covered: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
    """``res`` with its covered entries replaced by the stored values (STAN) or 0 (STAN-lite)."""
    uncovered = res * ~covered
    return uncovered if values is None else uncovered + values * covered


# The kernels work channels-last (B, H', W', T), as E is stored, and return that memory as a
# (B, T, H', W') view (torch's channels_last format): the next layers take it without a copy.
def _positions(op, x, weight, bias):
    covered, values = op.read()
    t = weight.shape[0]
    out = values.clone() if values is not None else torch.zeros(covered.shape)
    flat_covered = covered.view(-1, t)
    positions = (~flat_covered.all(1)).nonzero().squeeze(1)
    if len(positions):
        win = Windows(op, x, weight)
        cols = win.gather(positions)
        res = torch.addmm(bias, cols, win.matrix.t()) if bias is not None else cols @ win.matrix.t()
        kept = values.view(-1, t).index_select(0, positions) if values is not None else None
        out.view(-1, t).index_copy_(0, positions, _keep(res, flat_covered.index_select(0, positions), kept))
    return out.permute(0, 3, 1, 2), len(positions) * t


def _channels(op, x, weight, bias):
    covered, values = op.read()
    t = weight.shape[0]
    out = values.clone() if values is not None else torch.zeros(covered.shape)
    flat_out, flat_uncovered = out.view(-1, t), ~covered.view(-1, t)
    win = Windows(op, x, weight)
    computed = 0
    for channel in range(t):
        positions = flat_uncovered[:, channel].nonzero().squeeze(1)
        if len(positions):
            res = win.gather(positions) @ win.matrix[channel]
            flat_out[positions, channel] = res + bias[channel] if bias is not None else res
            computed += len(positions)
    return out.permute(0, 3, 1, 2), computed


# ``compiled`` imports TVM (seconds): only when a skipping epoch first needs it.
def _compiled(op, x, weight, bias):
    from .compiled import skip_conv

    conv, store = op.conv, op.context.store
    packed = store.variant == "stan-lite"
    if packed:  # the kernel reads E's bits and writes the zeros
        t, h, w = store.shapes[op.layer_name]
        covered, out = store.bits(op.layer_name, op.context.ids), torch.empty((len(x), h, w, t))
    else:
        covered, values = op.read()
        out = values.clone()
    computed = skip_conv(x, weight, bias, covered, out, op.padding, conv.stride, conv.dilation, packed)
    return out.permute(0, 3, 1, 2), computed


def prepare(op: StanConv, x: torch.Tensor, weight: torch.Tensor) -> None:
    """Compile ``op``'s kernel for inputs like ``x`` now (once per process and layer shape)."""
    from .compiled import compiled, geometry

    conv, packed = op.conv, op.context.store.variant == "stan-lite"
    compiled(geometry(x.shape, weight.shape, op.padding, conv.stride, conv.dilation, packed))


def _dense(op, x, weight, bias):
    out = op.dense(x, weight, bias)
    store = op.context.store
    if store.variant == "stan-lite":  # E's bits read in place by a compiled loop
        from .compiled import zero_covered

        out = out.contiguous()  # a copy only after a kernel that left its output channels-last
        zero_covered(out, store.bits(op.layer_name, op.context.ids))
        return out, out.numel()
    covered, values = op.read()
    out = _keep(out.permute(0, 2, 3, 1), covered, values)
    return out.permute(0, 3, 1, 2), covered.numel()


_KERNELS = {"compiled": _compiled, "positions": _positions, "channels": _channels, "dense": _dense}
