"""The compiled perforated conv against the torch reference, over masks, interpolations, conv
shapes and batch sizes; its CUDA build; and proof that it computes only the kept positions."""

import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.codegen.exporting import export_static
from sparsify_cnn.codegen.importer import import_program
from sparsify_cnn.codegen.target import target_spec
from sparsify_cnn.ops.registry import custom_convert_map
from sparsify_cnn.runtime import load
from sparsify_cnn.techniques.perforation.op import INTERPOLATIONS, PerforatedConv
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def _mask(kind: str, hw: tuple[int, int]) -> torch.Tensor:
    h, w = hw
    if kind == "uniform":
        order = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))
        kept = torch.zeros(h * w, dtype=torch.bool)
        kept[order[: (h * w) // 2]] = True
        return kept.view(h, w)
    kept = torch.zeros(h, w, dtype=torch.bool)
    if kind == "grid":
        kept[1::3, ::2] = True
    elif kind == "single":
        kept[h // 2, w // 3] = True
    elif kind == "all":
        kept[:] = True
    return kept


def _perforated(make_conv, in_shape, mask: str, interpolation: str) -> PerforatedConv:
    torch.manual_seed(0)  # the same weights whatever ran before
    conv = make_conv()
    out_hw = tuple(conv(torch.zeros(1, *in_shape)).shape[-2:])
    op = PerforatedConv(conv, out_hw, interpolation=interpolation)
    op.set_kept(_mask(mask, out_hw))
    return op


def _compile_and_compare(op: PerforatedConv, in_shape, batch: int, out, target: str = "llvm"):
    model = nn.Sequential(op, nn.ReLU()).eval()
    gm = capture(model, (batch, *in_shape)).graph_module
    images = torch.randn(2 * batch, *in_shape, generator=torch.Generator().manual_seed(1))
    result = compile_graph(gm, (batch, *in_shape), out, target=target, check_inputs=images)
    if target == "llvm":
        assert result.relative_diff <= TOLERANCE
        with torch.no_grad():
            expected = model(images[:batch]).numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(load(out)(images[:batch].numpy()), expected, rtol=1e-4, atol=1e-4 * scale)
    return result


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("mask", ["uniform", "grid", "single", "all"])
def test_masks_and_interpolations_match_torch(mask, interpolation, tmp_path):
    op = _perforated(lambda: nn.Conv2d(4, 6, 3, padding=1), (4, 8, 8), mask, interpolation)
    _compile_and_compare(op, (4, 8, 8), 2, tmp_path)


CONVS = {
    "stride 2": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (4, 9, 9), "nearest"),
    "dilation 2": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2), (4, 8, 8), "barycentric"),
    "groups 2, no bias": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False), (4, 7, 7), "zero"),
    "1x3 kernel, no padding": (lambda: nn.Conv2d(3, 5, (1, 3)), (3, 6, 8), "barycentric"),
    "depthwise, stride 2": (lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), (4, 8, 8), "nearest"),
    # whole SIMD blocks of output channels a group: the packed, blocked GEMM on CPU
    "blocked, 16 channels": (lambda: nn.Conv2d(5, 16, 3, padding=1), (5, 9, 9), "barycentric"),
    "blocked, groups 2, stride 2": (lambda: nn.Conv2d(4, 16, 3, stride=2, padding=1, groups=2), (4, 11, 11), "nearest"),
    # and whole blocks of input channels a group: input and output in the blocked layout
    "blocked in and out": (lambda: nn.Conv2d(16, 8, 3, padding=1), (16, 9, 9), "barycentric"),
    "blocked in, groups 2, dilated": (
        lambda: nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=2),
        (16, 8, 8),
        "zero",
    ),
    "blocked in, 2x3 kernel, stride 2": (lambda: nn.Conv2d(8, 8, (2, 3), stride=2), (8, 9, 10), "nearest"),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("conv", list(CONVS))
def test_conv_shapes_and_batches_match_torch(conv, batch, tmp_path):
    factory, in_shape, interpolation = CONVS[conv]
    op = _perforated(factory, in_shape, "uniform", interpolation)
    _compile_and_compare(op, in_shape, batch, tmp_path)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_build_compiles_with_nvcc(tmp_path):
    op = _perforated(lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (4, 9, 9), "uniform", "barycentric")
    result = _compile_and_compare(op, (4, 9, 9), 2, tmp_path, target="cuda:sm_80")
    assert result.manifest["check"]["nvcc"].startswith("compiled by nvcc")
    source = (tmp_path / "model.cu").read_text()
    assert "perforated_im2col" in source and "perforated_interpolate" in source


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_gemm_with_a_single_kept_column_fits_a_block(tmp_path):
    # A wide conv on a 2x2 map keeping one position: GPU matmul tiles of one column would stage
    # more than a block's 48 KB of shared memory; the lowering picks the reduction form.
    op = _perforated(lambda: nn.Conv2d(512, 512, 3, padding=1), (512, 2, 2), "uniform", "nearest")
    kept = torch.zeros(2, 2, dtype=torch.bool)
    kept[0, 0] = True
    op.set_kept(kept)
    result = _compile_and_compare(op, (512, 2, 2), 1, tmp_path, target="cuda:sm_90")
    assert result.manifest["check"]["nvcc"].startswith("compiled by nvcc")


def _lowered(op: PerforatedConv, input_shape):
    """The Relax module of ``op`` after legalization and fusion, for the host CPU."""
    import tvm
    from tvm import relax

    gm = capture(nn.Sequential(op), input_shape).graph_module
    spec = target_spec("llvm")
    with tvm.target.Target(spec):
        mod, _ = import_program(export_static(gm, input_shape), custom_convert_map())
        return relax.get_pipeline("zero")(mod)


def _reduction_macs(mod) -> int:
    """Multiply-accumulates of every reduction block of every PrimFunc in ``mod``."""
    import tvm
    from tvm.s_tir import Schedule

    macs = 0
    for func in mod.functions.values():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch = Schedule(func)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            iters = sch.get(block).iter_vars
            if any(v.iter_type == tvm.tirx.IterVar.CommReduce for v in iters):
                macs += math.prod(int(v.dom.extent) for v in iters)
    return macs


def test_lowered_module_computes_only_the_kept_positions():
    batch, in_shape = 2, (4, 12, 12)
    op = _perforated(lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2), in_shape, "grid", "nearest")
    mod = _lowered(op, (batch, *in_shape))
    kept, positions = op.kept_count, op.positions
    assert 0 < kept < positions
    im2col = mod["perforated_im2col"]
    assert [int(s) for s in im2col.params[-1].shape] == [2, 2 * 9, batch * kept]  # K columns an image, not H'*W'
    cost = op.cost((batch, *in_shape), None)
    assert _reduction_macs(mod) == batch * cost.performed_macs < batch * cost.dense_macs


def test_a_blocked_gemm_computes_the_kept_positions_and_a_few_padding_columns():
    from sparsify_cnn.codegen.cpu_schedules import REGISTERS

    batch, in_shape = 1, (8, 13, 13)
    op = _perforated(lambda: nn.Conv2d(8, 16, 3, padding=1), in_shape, "uniform", "nearest")
    mod = _lowered(op, (batch, *in_shape))
    gemm = mod["perforated_gemm"]
    groups, chunks, columns, block = (int(s) for s in gemm.params[-1].shape)
    assert (groups, chunks, block) == (1, 2, 8) and batch * op.kept_count <= columns < batch * op.kept_count + REGISTERS
    assert _reduction_macs(mod) == 16 * 8 * 9 * columns


def test_whole_input_blocks_are_read_and_written_in_the_blocked_layout():
    """With whole blocks of input channels, the GEMM reads the windows from the blocked input
    (the channels' block innermost) and the interpolation writes blocks: the dense blocked convs
    around the layer need no layout change of their own."""
    op = _perforated(lambda: nn.Conv2d(16, 8, 3, padding=1), (16, 10, 10), "grid", "nearest")
    mod = _lowered(op, (2, 16, 10, 10))
    _, flat, *_ = (tuple(int(d) for d in p.shape) for p in mod["perforated_gemm"].params)
    assert flat == (2, 2, 12 * 12, 8)  # (N, C/b, padded map, b)
    assert tuple(int(d) for d in mod["perforated_interpolate"].params[-1].shape) == (2, 1, 10, 10, 8)
    cost = op.cost((2, 16, 10, 10), None)
    columns = int(mod["perforated_gemm"].params[-1].shape[2])
    assert _reduction_macs(mod) == 8 * 16 * 9 * columns >= 2 * cost.performed_macs


def test_the_blocked_gemm_is_register_tiled():
    import tvm

    from sparsify_cnn.codegen.cpu_schedules import BlockedMatmul

    op = _perforated(lambda: nn.Conv2d(8, 32, 3, padding=1), (8, 10, 10), "grid", "nearest")
    mod = _lowered(op, (2, 8, 10, 10))
    with tvm.target.Target(target_spec("llvm")) as target:
        scheduled = BlockedMatmul().apply(mod["perforated_gemm"], target, False)
    assert scheduled is not None
    text = scheduled.mod.script()
    assert "T.parallel" in text and "T.vectorized" in text and "T.unroll" in text and '"local"' in text


@pytest.mark.parametrize("out_channels", [4, 16])  # im2col and a plain GEMM; the blocked implicit GEMM
def test_kernels_stay_in_bounds_on_random_tables(out_channels):
    """MetaSchedule's runner calls every kernel with random inputs, index tables included."""
    import tvm

    op = _perforated(lambda: nn.Conv2d(3, out_channels, 3, padding=1), (3, 6, 6), "uniform", "barycentric")
    mod = _lowered(op, (1, 3, 6, 6))
    rng = np.random.default_rng(0)
    names = [gv.name_hint for gv in mod.functions]
    table_readers = [n for n in ("perforated_im2col", "perforated_gemm", "perforated_interpolate") if n in names]
    blocked = ["perforated_gemm", "perforated_interpolate"]  # the implicit GEMM reads the window starts
    assert len(table_readers) == 3 if out_channels == 4 else table_readers == blocked
    for name in table_readers:
        func = mod[name]
        built = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")
        args = []
        for param in func.params:
            shape = [int(s) for s in param.shape]
            if "int" in str(param.dtype):
                info = np.iinfo(str(param.dtype))
                args.append(rng.integers(info.min, info.max, size=shape, dtype=str(param.dtype)))
            else:
                args.append(rng.standard_normal(shape).astype(param.dtype))
        tensors = [tvm.runtime.tensor(a) for a in args]
        built["main"](*tensors)
        assert np.isfinite(tensors[-1].numpy()).all()
