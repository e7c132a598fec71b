"""The Spatial TIR kernel against the torch reference (the custom op), on maps where the
prediction fires everywhere, partly, and never."""

import numpy as np
import pytest
import torch

from sparsify_cnn import models
from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.codegen.lowering.spatial import spatial_kernel
from sparsify_cnn.ops.spatial import padded_size, spatial_conv
from sparsify_cnn.passes.spatial import SpatialConfig, insert_spatial_ops, spatial_ops
from sparsify_cnn.runtime import load
from sparsify_cnn.transform.capture import capture


def _run_kernel(x, w, b, mask, residual, stride, pad, dil, groups, p, compute, g):
    import tvm

    n, _, h, wd = x.shape
    co, cg, k, _ = w.shape
    ho, wo = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1, (wd + 2 * pad - dil * (k - 1) - 1) // stride + 1
    kernel = spatial_kernel(tuple(x.shape), tuple(w.shape), (ho, wo), (stride,) * 2, (pad,) * 2, (dil,) * 2,
                            groups, p, compute, g)  # fmt: skip
    built = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((n, co, ho, wo), np.float32))
    residual = residual if residual is not None else torch.zeros(n, co, ho, wo)
    args = [x, w, b, mask, residual]
    built["main"](*[tvm.runtime.tensor(a.numpy()) for a in args], out)
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
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
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
