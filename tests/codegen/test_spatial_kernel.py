"""The Spatial TIR kernel against the torch reference (the custom op), on maps where the
prediction fires everywhere, partly, and never."""

import numpy as np
import pytest
import torch

from sparsify_cnn import models
from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.codegen.lowering.spatial import SpatialGeometry, cpu_kernel
from sparsify_cnn.ops.spatial import padded_size, spatial_conv
from sparsify_cnn.passes.spatial import SpatialConfig, insert_spatial_ops, spatial_ops
from sparsify_cnn.runtime import load
from sparsify_cnn.transform.capture import capture


def _run_kernel(x, w, b, mask, residual, stride, pad, dil, groups, p, compute, g):
    """The CPU kernel alone, on the packed weights it takes."""
    import tvm

    n, c_in, h, wd = x.shape
    co, _, k, _ = w.shape
    ho, wo = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1, (wd + 2 * pad - dil * (k - 1) - 1) // stride + 1
    geometry = SpatialGeometry(n, c_in, (h, wd), co, (k, k), (ho, wo), (stride,) * 2, (pad,) * 2, (dil,) * 2, groups,
                               p, compute, g, residual is not None)  # fmt: skip
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


SPATIAL_ZOO = [name for name in models.zoo_names() if name not in ("mlp", "lenet_caffe")]  # these have no conv+ReLU
SIZES = {"alexnet": 64, "resnet18": 16, "resnet34": 16, "resnet50": 16, "resnet32": 16}


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
