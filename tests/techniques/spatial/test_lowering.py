"""The Spatial TIR kernel against the torch reference (the custom op), on maps where the
prediction fires everywhere, partly, and never."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.codegen.artifact import cuda_source
from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.runtime import load
from sparsify_cnn.techniques.spatial.lowering import SpatialGeometry, cpu_kernel, gpu_kernel
from sparsify_cnn.techniques.spatial.op import padded_size, spatial_conv
from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, insert_spatial_ops, spatial_ops
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.suffix import record_op_inputs

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def _run_kernel(x, w, b, mask, residual, stride, pad, dil, groups, p, compute, g, max_value=None):
    """The CPU kernel alone, on the packed weights it takes."""
    import tvm

    n, c_in, h, wd = x.shape
    co, _, k, _ = w.shape
    ho, wo = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1, (wd + 2 * pad - dil * (k - 1) - 1) // stride + 1
    geometry = SpatialGeometry(n, c_in, (h, wd), co, (k, k), (ho, wo), (stride,) * 2, (pad,) * 2, (dil,) * 2, groups,
                               p, compute, g, residual is not None, max_value)  # fmt: skip
    built = tvm.compile(tvm.IRModule({"main": cpu_kernel(geometry).with_attr("global_symbol", "main")}), target="llvm")
    packed = np.zeros((co, geometry.packed_reduction), np.float32)
    packed[:, : geometry.reduction] = w.reshape(co, -1).numpy()
    args = [x.numpy(), packed, b.numpy(), mask.numpy()] + ([residual.numpy()] if residual is not None else [])
    out = tvm.runtime.tensor(np.zeros((n, co, ho, wo), np.float32))
    built["main"](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


@pytest.mark.parametrize("regime, bias_shift", [("fires everywhere", -100.0), ("partly", -0.5), ("never", 100.0)])
@pytest.mark.parametrize(
    "shape, k, stride, pad, dil, groups, p, compute, g, residual",
    [
        ((2, 3, 9, 9), 3, 1, 1, 1, 1, 2, False, 1, False),
        ((2, 3, 9, 9), 3, 1, 1, 1, 1, 2, True, 1, False),
        ((2, 4, 10, 10), 3, 2, 1, 1, 2, 3, False, 1, True),
        ((1, 4, 8, 8), 3, 1, 2, 2, 1, 2, False, 2, False),
        ((1, 4, 8, 8), 1, 1, 0, 1, 4, 4, False, 1, True),
        # dot products of every length form: K = 180 (64 lanes and a tail), 72 (32 lanes), 64 (no tail)
        ((1, 20, 7, 7), 3, 1, 1, 1, 1, 2, False, 1, True),
        ((2, 8, 6, 6), 3, 1, 1, 1, 1, 3, True, 2, False),
        ((1, 16, 6, 6), 2, 1, 0, 1, 1, 2, False, 1, False),
    ],
)
def test_kernel_equals_reference(regime, bias_shift, shape, k, stride, pad, dil, groups, p, compute, g, residual):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    co = 4 if groups != 2 else 6
    w = torch.randn(co, shape[1] // groups, k, k, generator=generator)
    b = torch.randn(co, generator=generator) + bias_shift
    ho = (shape[2] + 2 * pad - dil * (k - 1) - 1) // stride + 1
    mask = torch.rand(co, padded_size(ho, p), padded_size(ho, p), generator=generator) < 0.4
    r = torch.randn(shape[0], co, ho, ho, generator=generator) if residual else None
    expected = spatial_conv(x, w, b, mask, r, [stride] * 2, [pad] * 2, [dil] * 2, groups, p, compute, g).numpy()
    got = _run_kernel(x, w, b, mask, r, stride, pad, dil, groups, p, compute, g)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    zeros = float((expected == 0).mean())
    assert {"fires everywhere": zeros == 1.0, "partly": 0 < zeros < 1, "never": zeros < 1}[regime]


@pytest.mark.parametrize(
    "shape, k, pad, groups, p, compute, g, residual, max_value",
    [
        ((2, 3, 7, 7), 3, 1, 1, 2, False, 1, False, 6.0),  # ReLU6
        ((2, 3, 7, 7), 3, 1, 1, 2, True, 1, True, 6.0),  # ReLU6 after a residual add
        ((1, 4, 6, 6), 3, 1, 4, 3, False, 2, True, 0.75),  # depthwise, a bound that is not a whole number
    ],
)
def test_kernel_with_an_upper_bound_equals_reference(shape, k, pad, groups, p, compute, g, residual, max_value):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator) * 3
    co = 4
    w = torch.randn(co, shape[1] // groups, k, k, generator=generator)
    b = torch.randn(co, generator=generator) - 1.0
    ho = shape[2] + 2 * pad - k + 1
    mask = torch.rand(co, padded_size(ho, p), padded_size(ho, p), generator=generator) < 0.4
    r = torch.randn(shape[0], co, ho, ho, generator=generator) * 3 if residual else None
    expected = spatial_conv(x, w, b, mask, r, [1, 1], [pad] * 2, [1, 1], groups, p, compute, g, max_value).numpy()
    unbounded = spatial_conv(x, w, b, mask, r, [1, 1], [pad] * 2, [1, 1], groups, p, compute, g).numpy()
    assert (expected == max_value).mean() > 0.05 and (unbounded > max_value).mean() > 0.05  # the bound bites
    assert 0 < (expected == 0).mean() < 1
    got = _run_kernel(x, w, b, mask, r, 1, pad, 1, groups, p, compute, g, max_value)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert got.max() == np.float32(max_value)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("max_value", [None, 6.0])
def test_cuda_kernel_with_an_upper_bound_builds_with_nvcc(max_value):
    import tvm
    from tvm.support import nvcc

    geometry = SpatialGeometry(1, 4, (6, 6), 4, (3, 3), (6, 6), (1, 1), (1, 1), (1, 1), 1, 2, False, 1, True, max_value)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    built = tvm.compile(tvm.IRModule({"main": gpu_kernel(geometry).with_attr("global_symbol", "main")}), target=target)
    source = cuda_source(built)
    assert ("min(acc_ptr[0], 0x1.8p+2f" in source) == (max_value is not None)  # 6.0, exact as a hex float
    with target:
        binary = nvcc.compile_cuda(source, target_format="fatbin", arch=["-gencode", "arch=compute_80,code=sm_80"],
                                   compiler="nvcc")  # fmt: skip
    assert len(binary) > 1000


class MobileBlock(nn.Module):
    """A MobileNetV2 stem and inverted residual block at tiny size: conv-BN-ReLU6, 1x1
    expansion, depthwise 3x3 (ReLU6 both), linear projection, residual add; then ReLU6 of a
    1x1 conv written as a clamp."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4)
        self.expand, self.bn1 = nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.depthwise, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.project, self.bn3 = nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.last = nn.Conv2d(4, 6, 1)
        self.relu6 = nn.ReLU6(inplace=True)
        for bn in (self.bn0, self.bn1, self.bn2, self.bn3):
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.uniform_(1.0, 3.0)

    def forward(self, x):
        x = self.relu6(self.bn0(self.stem(x)))
        y = F.relu6(self.bn2(self.depthwise(self.relu6(self.bn1(self.expand(x))))))
        x = x + self.bn3(self.project(y))
        return torch.clamp(self.last(x), 0, 6).mean((2, 3))


@pytest.mark.parametrize("method", ["fx", "export"])
def test_compiled_mobilenet_block_with_relu6_matches_torch(method, tmp_path):
    torch.manual_seed(0)
    model = MobileBlock().eval()
    gm = insert_spatial_ops(capture(model, (2, 3, 12, 12), method=method).graph_module).graph_module
    ops = spatial_ops(gm)
    assert sorted(ops) == ["depthwise", "expand", "last", "stem"] and all(op.max_value == 6.0 for op in ops.values())
    generator = torch.Generator().manual_seed(1)
    for op in ops.values():
        op.set_mask(torch.rand(op.mask.shape, generator=generator) < 0.5)
    images = torch.randn(2, 3, 12, 12) * 4
    with torch.no_grad():
        expected = gm(images).numpy()
        assert any(op.dense(*inputs).max() == 6.0 for op, inputs in _op_inputs(gm, ops, images))  # the bound bites
    result = compile_graph(gm, (2, 3, 12, 12), tmp_path, check_inputs=images)
    assert result.relative_diff <= TOLERANCE
    np.testing.assert_allclose(load(tmp_path)(images.numpy()), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _op_inputs(gm, ops, images):
    inputs = record_op_inputs(gm, ops, images)
    return [(op, inputs[name]) for name, op in ops.items()]


# mlp and lenet_caffe have no conv+ReLU; resnet34 and resnet32 have resnet18's kinds of layers,
# only more of them (their Spatial kernels took 40 s each to compile here)
SPATIAL_ZOO = [name for name in models.zoo_names() if name not in ("mlp", "lenet_caffe", "resnet34", "resnet32")]
SIZES = {"alexnet": 64, "resnet18": 16, "resnet50": 16}


@pytest.mark.parametrize("name", SPATIAL_ZOO)
def test_compiled_spatial_models_match_torch(name, tmp_path):
    size = SIZES.get(name)
    torch.manual_seed(0)
    entry = models.get_entry(name)
    shape = (entry.input_shape[0], size or entry.input_shape[1], size or entry.input_shape[2])
    gm = insert_spatial_ops(capture(entry.factory().eval(), (1, *shape)).graph_module, SpatialConfig()).graph_module
    generator = torch.Generator().manual_seed(1)
    for op in spatial_ops(gm).values():
        op.set_mask(torch.rand(op.mask.shape, generator=generator) < 0.5)
    images = torch.randn(2, *shape)
    result = compile_graph(gm, (2, *shape), tmp_path, check_inputs=images)
    assert result.relative_diff <= TOLERANCE
    with torch.no_grad():
        expected = gm(images[:2]).numpy()
    np.testing.assert_allclose(load(tmp_path)(images[:2].numpy()), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
