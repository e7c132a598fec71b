"""The default CPU schedules: every conv variant and epilogue compiles scheduled (parallel,
vectorised) and matches torch; what a rule does not know is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsify_cnn.codegen.cpu_schedules import (
    REGISTERS,
    REGISTERS_AVX512,
    Conv2D,
    Elementwise,
    Window,
    default_cpu_schedule,
    matmul_tile,
)

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


class ConvBlock(nn.Module):
    def __init__(self, conv: nn.Conv2d, residual: bool):
        super().__init__()
        self.conv, self.residual = conv, residual

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return y + x if self.residual else y


CONVS = {
    "3x3": (nn.Conv2d(8, 8, 3, padding=1), (1, 8, 12, 12), True),
    "first layer 7x7 stride 2": (nn.Conv2d(3, 16, 7, stride=2, padding=3), (1, 3, 20, 20), False),
    "1x1 stride 2": (nn.Conv2d(8, 16, 1, stride=2, bias=False), (1, 8, 9, 9), False),
    "grouped": (nn.Conv2d(8, 8, 3, padding=1, groups=4), (1, 8, 10, 10), True),
    "depthwise": (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 7, 7), True),
    "dilated": (nn.Conv2d(8, 6, 3, padding=2, dilation=2), (1, 8, 11, 11), False),
    "batch 3, odd channels": (nn.Conv2d(5, 7, 3), (3, 5, 9, 13), False),
}


def _lowered(model: nn.Module, shape):
    """The Relax module of ``model`` after legalisation and fusion, unscheduled, and its target."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from sparsify_cnn.codegen.target import target_spec

    program = torch.export.export(model, (torch.randn(*shape),))
    mod = relax.transform.DecomposeOpsForInference()(from_exported_program(program, keep_params_as_input=True))
    target = tvm.target.Target(target_spec("llvm"))
    with target:
        return relax.get_pipeline("zero")(mod), target


def _prim_funcs(mod):
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("name", list(CONVS))
def test_every_conv_variant_is_scheduled_and_matches_torch(name):
    import tvm
    from tvm import relax

    torch.manual_seed(0)
    conv, shape, residual = CONVS[name]
    model = ConvBlock(conv, residual).eval()
    mod, target = _lowered(model, shape)
    with target:
        scheduled = default_cpu_schedule()(mod)
    convs = {n: f for n, f in _prim_funcs(scheduled).items() if "conv2d" in n}
    assert len(convs) == 1
    (func,) = convs.values()
    assert func.attrs["tirx.is_scheduled"] and "T.parallel" in func.script() and "T.vectorized" in func.script()
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    x = torch.randn(*shape)
    params = [tvm.runtime.tensor(p.detach().numpy()) for p in model.parameters()]
    out = vm["main"](tvm.runtime.tensor(x.numpy()), *params)
    out = out[0] if not hasattr(out, "numpy") else out
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out.numpy()), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 5])
def test_a_linear_layer_with_its_epilogue_is_scheduled_and_matches_torch(batch):
    import tvm
    from tvm import relax

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 13), nn.ReLU()).eval()
    mod, target = _lowered(model, (batch, 20))
    with target:
        scheduled = default_cpu_schedule()(mod)
    (func,) = [f for n, f in _prim_funcs(scheduled).items() if "matmul" in n]
    assert "T.parallel" in func.script() and "T.vectorized" in func.script()
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    x = torch.randn(batch, 20)
    params = [tvm.runtime.tensor(p.detach().numpy()) for p in model.parameters()]
    out = vm["main"](tvm.runtime.tensor(x.numpy()), *params)
    out = out[0] if not hasattr(out, "numpy") else out
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out.numpy()), model(x), rtol=1e-4, atol=1e-4)


def test_the_conv_rule_declines_what_is_not_a_conv_and_elementwise_takes_it():
    import tvm

    mod, target = _lowered(nn.Sequential(nn.ReLU()).eval(), (1, 4, 8, 8))
    (func,) = _prim_funcs(mod).values()
    assert Conv2D().apply(func, target, False) is None
    scheduled = Elementwise().apply(func, target, False)
    assert scheduled is not None and "T.parallel" in scheduled.mod["main"].script()
    assert isinstance(scheduled.mod["main"], tvm.tirx.PrimFunc)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2), nn.MaxPool2d(2, stride=1)])
def test_pooling_is_scheduled_by_the_window_rule_and_matches_torch(pool):
    import tvm
    from tvm import relax

    model = nn.Sequential(pool).eval()
    shape = (2, 5, 13, 13)
    mod, target = _lowered(model, shape)
    (func,) = _prim_funcs(mod).values()
    assert Conv2D().apply(func, target, False) is None and Elementwise().apply(func, target, False) is None
    with target:
        scheduled = default_cpu_schedule()(mod)
    (func,) = _prim_funcs(scheduled).values()
    assert "T.parallel" in func.script()
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    x = torch.randn(*shape)
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    out = out[0] if not hasattr(out, "numpy") else out
    torch.testing.assert_close(torch.from_numpy(out.numpy()), model(x), rtol=1e-5, atol=1e-5)


def test_a_function_with_several_reductions_is_not_the_window_rule_s():
    mod, target = _lowered(nn.Sequential(nn.Softmax(dim=1)).eval(), (2, 10))
    for func in _prim_funcs(mod).values():
        assert Window().apply(func, target, False) is None and Conv2D().apply(func, target, False) is None


def test_matrix_product_tiles_share_each_weight_load_across_rows():
    assert matmul_tile(1, 4096, REGISTERS_AVX512) == (1, 32)  # one row: whole cache lines of columns
    assert matmul_tile(16, 4096, REGISTERS_AVX512) == (4, 32)  # batch 16: weights read 4 times, not 16
    for rows, width in [(16, 1000), (5, 13), (3, 7), (64, 4096)]:
        for registers in (REGISTERS, REGISTERS_AVX512):
            row_tile, lanes = matmul_tile(rows, width, registers)
            assert rows % row_tile == 0 and row_tile * lanes // 8 <= registers
