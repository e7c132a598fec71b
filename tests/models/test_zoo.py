"""The seed model zoo: tracing, shapes, parameter counts, Caffe layer semantics, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import fx, nn

from sparsify_cnn.errors import ModelLoadError
from sparsify_cnn.models import ZOO, build, get_entry, zoo_names
from sparsify_cnn.models._shapes import caffe_pool_out
from sparsify_cnn.models.caffe_cifar import WithinChannelLRN

NAMES = zoo_names()
IMAGENET = {"alexnet", "resnet18", "resnet34", "resnet50"}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn_stats(model: nn.Module) -> None:
    # Fresh running stats (0 mean, 1 var) make eval-mode BN almost the identity; random ones
    # make a wrong BN placement or mode visible.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


@pytest.fixture(scope="module")
def zoo_models() -> dict[str, nn.Module]:
    """Every zoo model built once, seeded, with 10 classes, in eval mode."""
    models = {}
    for name in NAMES:
        torch.manual_seed(0)
        model = build(name)
        _randomize_bn_stats(model)
        models[name] = model.eval()
    return models


def test_zoo_lists_every_model_in_order():
    assert NAMES == [
        "lenet", "lenet_caffe", "mlp", "cq", "alexlrn", "alexbn", "nin", "alexnet",
        "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "resnet32",
    ]  # fmt: skip
    for name, entry in ZOO.items():
        assert entry.name == name
        assert entry.description and "\n" not in entry.description
        assert entry.source
    shapes = {name: ZOO[name].input_shape for name in NAMES}
    assert shapes["lenet"] == shapes["lenet_caffe"] == shapes["mlp"] == (1, 28, 28)
    for name in ("cq", "alexlrn", "alexbn", "nin", "vgg16", "vgg19", "resnet32"):
        assert shapes[name] == (3, 32, 32), name
    for name in IMAGENET:
        assert shapes[name] == (3, 224, 224), name


@pytest.mark.parametrize("name", NAMES)
def test_traces_and_matches_eager(zoo_models, name):
    model = zoo_models[name]
    traced = fx.symbolic_trace(model)
    # Plain tracing must reach torch.nn's own layers: no custom module is left opaque.
    called = [traced.get_submodule(n.target) for n in traced.graph.nodes if n.op == "call_module"]
    assert called, "no modules called"
    opaque = {type(m).__name__ for m in called if not type(m).__module__.startswith("torch.nn")}
    assert not opaque
    assert any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in called)

    shape = ZOO[name].input_shape
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 2):
        x = torch.randn(batch, *shape, generator=gen)
        with torch.no_grad():
            eager, from_graph = model(x), traced(x)
        assert eager.shape == (batch, 10)
        assert torch.isfinite(eager).all()
        torch.testing.assert_close(from_graph, eager, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_relus_are_distinct_and_not_in_place(zoo_models, name):
    # Passes rewrite a conv and the ReLU after it as a pair, and hook conv outputs: a shared
    # or in-place ReLU would break both.
    traced = fx.symbolic_trace(zoo_models[name])
    relu_calls = [
        n.target
        for n in traced.graph.nodes
        if n.op == "call_module" and isinstance(traced.get_submodule(n.target), nn.ReLU)
    ]
    assert relu_calls
    assert len(relu_calls) == len(set(relu_calls))
    assert not any(m.inplace for m in zoo_models[name].modules() if isinstance(m, nn.ReLU))


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_and_in_channels(name):
    c, h, w = ZOO[name].input_shape
    other = 3 if c == 1 else 1
    torch.manual_seed(0)
    model = build(name, num_classes=7, in_channels=other).eval()
    with torch.no_grad():
        out = model(torch.randn(2, other, h, w))
    assert out.shape == (2, 7)
    with pytest.raises(RuntimeError):  # the default channel count no longer fits
        model(torch.randn(1, c, h, w))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in IMAGENET])
def test_factories_leave_seeding_to_callers(name):
    def weights(seed):
        torch.manual_seed(seed)
        return torch.cat([p.detach().flatten() for p in build(name).parameters()])

    assert torch.equal(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))


# --- parameter counts by hand ------------------------------------------------------------


def conv(cin, cout, k, bias=True):
    return cout * cin * k * k + (cout if bias else 0)


def linear(fin, fout):
    return fin * fout + fout


def bn(c):
    return 2 * c  # weight and bias; running stats are buffers


def test_param_count_lenet(zoo_models):
    # conv1 20*1*5*5 + 20 = 520; conv2 50*20*5*5 + 50 = 25,050;
    # ip1 (50*4*4 = 800) * 500 + 500 = 400,500; ip2 500*10 + 10 = 5,010
    expected = 520 + 25_050 + 400_500 + 5_010
    assert expected == 431_080
    assert conv(1, 20, 5) + conv(20, 50, 5) + linear(800, 500) + linear(500, 10) == expected
    assert _n_params(zoo_models["lenet"]) == expected
    assert _n_params(zoo_models["lenet_caffe"]) == expected  # ReLUs hold no weights


def test_param_count_mlp():
    # 784*500 + 500 = 392,500; 500*10 + 10 = 5,010
    assert _n_params(build("mlp")) == 392_500 + 5_010 == 397_510
    assert _n_params(build("mlp", hidden=100)) == 784 * 100 + 100 + 100 * 10 + 10


def test_param_count_cq(zoo_models):
    # conv1 32*3*25 + 32 = 2,432; conv2 32*32*25 + 32 = 25,632; conv3 64*32*25 + 64 = 51,264;
    # ip1 (64*4*4 = 1,024) * 64 + 64 = 65,600; ip2 64*10 + 10 = 650
    expected = 2_432 + 25_632 + 51_264 + 65_600 + 650
    assert expected == 145_578
    convs = conv(3, 32, 5) + conv(32, 32, 5) + conv(32, 64, 5)
    by_formula = convs + linear(1024, 64) + linear(64, 10)
    assert by_formula == expected
    assert _n_params(zoo_models["cq"]) == expected
    # alexlrn: CQ's convs, ip1 1,024*10 + 10 = 10,250, LRN has no weights
    assert _n_params(zoo_models["alexlrn"]) == 2_432 + 25_632 + 51_264 + 10_250 == 89_578
    # alexbn: + BN 2*(32 + 32 + 64) = 256
    assert _n_params(zoo_models["alexbn"]) == 89_578 + 256


def basic_block(cin, planes, downsample):
    return (
        conv(cin, planes, 3, bias=False) + bn(planes)
        + conv(planes, planes, 3, bias=False) + bn(planes)
        + ((conv(cin, planes, 1, bias=False) + bn(planes)) if downsample else 0)
    )  # fmt: skip


def bottleneck(cin, planes, downsample):
    return (
        conv(cin, planes, 1, bias=False) + bn(planes)
        + conv(planes, planes, 3, bias=False) + bn(planes)
        + conv(planes, 4 * planes, 1, bias=False) + bn(4 * planes)
        + ((conv(cin, 4 * planes, 1, bias=False) + bn(4 * planes)) if downsample else 0)
    )  # fmt: skip


def test_param_count_resnet18():
    stem = conv(3, 64, 7, bias=False) + bn(64)  # 9,408 + 128
    stages = (
        2 * basic_block(64, 64, False)  # 2 * 73,984
        + basic_block(64, 128, True) + basic_block(128, 128, False)  # 230,144 + 295,424
        + basic_block(128, 256, True) + basic_block(256, 256, False)  # 919,040 + 1,180,672
        + basic_block(256, 512, True) + basic_block(512, 512, False)  # 3,673,088 + 4,720,640
    )  # fmt: skip
    assert basic_block(64, 64, False) == 2 * (64 * 64 * 9 + 128) == 73_984
    # 64*128*9 + 128*128*9 + 64*128 (shortcut) weights + 3 BNs * 256
    assert basic_block(64, 128, True) == 73_728 + 147_456 + 8_192 + 768 == 230_144
    fc = linear(512, 1000)  # 513,000
    expected = stem + stages + fc
    assert expected == 11_689_512  # torchvision's published count
    assert _n_params(build("resnet18", num_classes=1000)) == expected


def test_param_count_resnet50():
    stem = conv(3, 64, 7, bias=False) + bn(64)
    stages = 0
    cin = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        stages += bottleneck(cin, planes, True)
        stages += (blocks - 1) * bottleneck(4 * planes, planes, False)
        cin = 4 * planes
    # first block of stage 1: 64*64 + 64*64*9 + 64*256 + 64*256 (shortcut) weights
    # = 4,096 + 36,864 + 16,384 + 16,384 = 73,728, plus BN 2*(64 + 64 + 256 + 256) = 1,280
    assert bottleneck(64, 64, True) == 73_728 + 1_280
    expected = stem + stages + linear(2048, 1000)
    assert expected == 25_557_032  # torchvision's published count
    assert _n_params(build("resnet50", num_classes=1000)) == expected


def test_param_count_resnet34():
    assert _n_params(build("resnet34", num_classes=1000)) == 21_797_672  # torchvision's


def test_param_count_alexnet():
    expected = (
        conv(3, 64, 11) + conv(64, 192, 5) + conv(192, 384, 3) + conv(384, 256, 3)
        + conv(256, 256, 3) + linear(256 * 6 * 6, 4096) + linear(4096, 4096) + linear(4096, 1000)
    )  # fmt: skip
    assert expected == 61_100_840  # torchvision's published count
    assert _n_params(build("alexnet", num_classes=1000)) == expected


def test_param_count_vgg(zoo_models):
    # VGG-16 conv weights (no bias, BN follows):
    #   3*64*9 = 1,728; 64*64*9 = 36,864; 64*128*9 = 73,728; 128*128*9 = 147,456;
    #   128*256*9 = 294,912; 2 * 256*256*9 = 1,179,648; 256*512*9 = 1,179,648;
    #   5 * 512*512*9 = 11,796,480                                  -> 14,710,464
    # BN 2*(2*64 + 2*128 + 3*256 + 6*512) = 8,448; linear 512*10 + 10 = 5,130
    vgg16 = 14_710_464 + 8_448 + 5_130
    assert vgg16 == 14_724_042
    assert _n_params(zoo_models["vgg16"]) == vgg16
    # VGG-19 adds one 256*256*9 = 589,824 and two 512*512*9 = 4,718,592 conv weights
    # and BN 2*(256 + 2*512) = 2,560
    vgg19 = vgg16 + 589_824 + 4_718_592 + 2_560
    assert vgg19 == 20_035_018
    assert _n_params(zoo_models["vgg19"]) == vgg19
    # Without BN every conv gets a bias: 13 convs with 4,224 output channels in all
    assert _n_params(build("vgg16", batch_norm=False)) == 14_710_464 + 4_224 + 5_130


def test_param_count_resnet32(zoo_models):
    # stem 3*32*9 = 864 + BN 64                                              = 928
    # stage 1: 5 blocks * 2 convs * 32*32*9 = 92,160 + 10 BN * 64 = 640       = 92,800
    # stage 2: 32*64*9 = 18,432 + 64*64*9 = 36,864 + shortcut 32*64 = 2,048
    #          + 8 more convs * 36,864 = 294,912 + 11 BN * 128 = 1,408        = 353,664
    # stage 3: 64*128*9 = 73,728 + 128*128*9 = 147,456 + shortcut 64*128 = 8,192
    #          + 8 * 147,456 = 1,179,648 + 11 BN * 256 = 2,816                = 1,411,840
    # fc 128*10 + 10                                                          = 1,290
    expected = 928 + 92_800 + 353_664 + 1_411_840 + 1_290
    assert expected == 1_860_522
    by_formula = (
        conv(3, 32, 3, bias=False) + bn(32)
        + 5 * basic_block(32, 32, False)
        + basic_block(32, 64, True) + 4 * basic_block(64, 64, False)
        + basic_block(64, 128, True) + 4 * basic_block(128, 128, False)
        + linear(128, 10)
    )  # fmt: skip
    assert by_formula == expected
    assert _n_params(zoo_models["resnet32"]) == expected


def test_param_count_nin(zoo_models):
    expected = (
        conv(3, 192, 5) + conv(192, 160, 1) + conv(160, 96, 1)
        + conv(96, 192, 5) + conv(192, 192, 1) + conv(192, 192, 1)
        + conv(192, 192, 3) + conv(192, 192, 1) + conv(192, 10, 1)
    )  # fmt: skip
    assert expected == 966_986
    assert _n_params(zoo_models["nin"]) == expected


# --- Caffe semantics -----------------------------------------------------------------------


def lrn_loop(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's WITHIN_CHANNEL LRN element by element: the mean of squares over a size x size
    window, zero padded, always divided by size*size."""
    n_, c_, h_, w_ = x.shape
    r = size // 2
    out = torch.empty_like(x)
    for n in range(n_):
        for c in range(c_):
            for h in range(h_):
                for w in range(w_):
                    total = 0.0
                    for i in range(h - r, h + r + 1):
                        for j in range(w - r, w + r + 1):
                            if 0 <= i < h_ and 0 <= j < w_:
                                total += float(x[n, c, i, j]) ** 2
                    out[n, c, h, w] = x[n, c, h, w] * (1 + alpha * total / size**2) ** (-beta)
    return out


@pytest.mark.parametrize("size,alpha,beta", [(3, 1.0, 0.75), (5, 0.3, 0.5), (3, 5e-5, 0.75)])
def test_within_channel_lrn_matches_loop(size, alpha, beta):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    got = WithinChannelLRN(size, alpha, beta)(x)
    torch.testing.assert_close(got, lrn_loop(x, size, alpha, beta), rtol=1e-12, atol=1e-12)
    if alpha > 1e-3:  # the oracle itself must not be the identity
        assert not torch.allclose(got, x)


def test_within_channel_lrn_rejects_even_size():
    with pytest.raises(ValueError):
        WithinChannelLRN(4)


def caffe_pool_loop(x: torch.Tensor, kernel: int, stride: int, mode: str) -> torch.Tensor:
    """Caffe's PoolingLayer forward (pad 0): output size rounded up, AVE divides by the part of
    the window that lies inside the input."""
    n_, c_, h_, w_ = x.shape
    oh = math.ceil((h_ - kernel) / stride) + 1
    ow = math.ceil((w_ - kernel) / stride) + 1
    out = torch.empty(n_, c_, oh, ow, dtype=x.dtype)
    for ph in range(oh):
        for pw in range(ow):
            hs, ws = ph * stride, pw * stride
            he, we = min(hs + kernel, h_), min(ws + kernel, w_)
            window = x[:, :, hs:he, ws:we]
            if mode == "max":
                out[:, :, ph, pw] = window.amax(dim=(2, 3))
            else:
                out[:, :, ph, pw] = window.sum(dim=(2, 3)) / ((he - hs) * (we - ws))
    return out


@pytest.mark.parametrize("size", [32, 16, 8, 7])
def test_ceil_mode_pools_match_caffe(size):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, size, size, dtype=torch.float64, generator=gen)
    max_pool, avg_pool = nn.MaxPool2d(3, 2, ceil_mode=True), nn.AvgPool2d(3, 2, ceil_mode=True)
    torch.testing.assert_close(max_pool(x), caffe_pool_loop(x, 3, 2, "max"), rtol=0, atol=0)
    torch.testing.assert_close(avg_pool(x), caffe_pool_loop(x, 3, 2, "ave"), rtol=1e-12, atol=1e-12)


def lrn_shifted(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """The within-channel LRN again, vectorised by summing shifted copies of the zero-padded
    squares (fast enough for whole networks, independent of avg_pool2d)."""
    r = size // 2
    sq = nn.functional.pad(x * x, (r, r, r, r))
    h, w = x.shape[-2:]
    total = sum(sq[..., i : i + h, j : j + w] for i in range(size) for j in range(size))
    return x * (1 + alpha * total / size**2) ** (-beta)


def test_lrn_shifted_matches_loop():
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(lrn_shifted(x, 3, 0.7, 0.75), lrn_loop(x, 3, 0.7, 0.75))


def caffe_reference(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The prototxt's forward pass layer by layer with Caffe's pooling, on ``model``'s weights."""
    F = nn.functional

    def conv(layer, t):
        return F.conv2d(t, getattr(model, layer).weight, getattr(model, layer).bias, padding=2)

    def bn(layer, t):
        m = getattr(model, layer)
        shape = (1, -1, 1, 1)
        std = (m.running_var + m.eps).sqrt().view(shape)
        return (t - m.running_mean.view(shape)) / std * m.weight.view(shape) + m.bias.view(shape)

    def norm(t):
        return lrn_shifted(t, 3, 5e-5, 0.75) if name == "alexlrn" else bn_next.pop(0)(t)

    bn_next = [lambda t: bn("bn1", t), lambda t: bn("bn2", t)]
    t = F.relu(caffe_pool_loop(conv("conv1", x), 3, 2, "max"))
    if name != "cq":
        t = norm(t)
    t = caffe_pool_loop(F.relu(conv("conv2", t)), 3, 2, "ave")
    if name != "cq":
        t = norm(t)
    t = caffe_pool_loop(F.relu(conv("conv3", t)), 3, 2, "ave")
    if name == "alexbn":
        t = bn("bn3", t)
    t = F.linear(t.flatten(1), model.ip1.weight, model.ip1.bias)
    if name == "cq":  # no ReLU between ip1 and ip2 in cifar10_quick
        t = F.linear(t, model.ip2.weight, model.ip2.bias)
    return t


@pytest.mark.parametrize("name", ["cq", "alexlrn", "alexbn"])
def test_caffe_nets_match_reference(zoo_models, name):
    model = zoo_models[name].double()
    try:
        # inputs large enough that the LRN's alpha = 5e-5 changes the result measurably
        gen = torch.Generator().manual_seed(6)
        x = 30 * torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=gen)
        with torch.no_grad():
            expected = caffe_reference(name, model, x)
            torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-9)
    finally:
        model.float()


def test_caffe_pool_sizes():
    assert [caffe_pool_out(n, 3, 2) for n in (32, 16, 8)] == [16, 8, 4]
    for kernel, stride, pad in ((3, 2, 0), (2, 2, 0), (3, 2, 1), (3, 1, 1)):
        pool = nn.MaxPool2d(kernel, stride, pad, ceil_mode=True)
        for n in range(kernel, 40):
            got = pool(torch.zeros(1, 1, n, n)).shape[-1]
            assert got == caffe_pool_out(n, kernel, stride, pad), (kernel, stride, pad, n)


def test_caffe_nets_spatial_sizes(zoo_models):
    # Caffe rounds 32 -> 16 -> 8 -> 4, so ip1 sees 64*4*4 = 1,024 features.
    for name in ("cq", "alexlrn", "alexbn"):
        assert zoo_models[name].ip1.in_features == 1024, name
    assert zoo_models["lenet"].ip1.in_features == 800
    out = {}
    model = zoo_models["cq"]
    hooks = [
        getattr(model, p).register_forward_hook(lambda m, i, o, p=p: out.update({p: o.shape}))
        for p in ("pool1", "pool2", "pool3")
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert [out[p][-1] for p in ("pool1", "pool2", "pool3")] == [16, 8, 4]


def test_lenet_conv_relu_option(zoo_models):
    def kinds(model):
        return [type(m).__name__ for m in model.children()]

    assert kinds(zoo_models["lenet"]) == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
        "Flatten", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    assert kinds(zoo_models["lenet_caffe"]) == [
        "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    assert kinds(build("lenet", conv_relu=False)) == kinds(zoo_models["lenet_caffe"])


def test_nin_layer_order(zoo_models):
    names = [name for name, _ in zoo_models["nin"].named_children()]
    assert names == [
        "conv1", "relu1", "cccp1", "relu_cccp1", "cccp2", "relu_cccp2", "pool1", "drop1",
        "conv2", "relu2", "cccp3", "relu_cccp3", "cccp4", "relu_cccp4", "pool2", "drop2",
        "conv3", "relu3", "cccp5", "relu_cccp5", "cccp6", "relu_cccp6", "pool3", "flatten",
    ]  # fmt: skip
    nin = zoo_models["nin"]
    assert isinstance(nin.pool1, nn.MaxPool2d) and isinstance(nin.pool2, nn.AvgPool2d)
    assert nin.pool1.ceil_mode and nin.pool2.ceil_mode
    assert nin.drop1.p == nin.drop2.p == 0.5


def test_vgg_structure(zoo_models):
    for name, convs in (("vgg16", 13), ("vgg19", 16)):
        model = zoo_models[name]
        kinds = [type(m) for m in model.features]
        assert kinds.count(nn.Conv2d) == kinds.count(nn.BatchNorm2d) == kinds.count(nn.ReLU) == convs
        assert kinds.count(nn.MaxPool2d) == 4
        assert kinds[-3:] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]  # GraSP: no pool after stage 5
        assert isinstance(model.avgpool, nn.AvgPool2d) and model.avgpool.kernel_size == 2
        assert all(m.bias is None for m in model.features if isinstance(m, nn.Conv2d))
        assert (model.classifier.in_features, model.classifier.out_features) == (512, 10)


def _reference_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """He et al.'s residual unit: relu(F(x) + shortcut(x)), the ReLU after the addition."""
    relu = nn.functional.relu
    if hasattr(block, "conv3"):
        f = relu(block.bn1(block.conv1(x)))
        f = relu(block.bn2(block.conv2(f)))
        f = block.bn3(block.conv3(f))
    else:
        f = block.bn2(block.conv2(relu(block.bn1(block.conv1(x)))))
    shortcut = x if block.downsample is None else block.downsample[1](block.downsample[0](x))
    return relu(f + shortcut)


@pytest.mark.parametrize(
    "name,block,channels,size",
    [("resnet18", "layer2.0", 64, 8), ("resnet18", "layer2.1", 128, 4),
     ("resnet50", "layer3.0", 512, 6), ("resnet50", "layer1.1", 256, 5),
     ("resnet32", "layer3.0", 64, 8)],
)  # fmt: skip
def test_residual_blocks_match_reference(zoo_models, name, block, channels, size):
    module = zoo_models[name].get_submodule(block)
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(module(x), _reference_block(module, x))


def test_input_size_option():
    cases = (
        ("lenet", (1, 32, 32)), ("mlp", (1, 32, 32)), ("cq", (3, 24, 24)), ("vgg16", (3, 64, 64)),
    )  # fmt: skip
    for name, shape in cases:
        model = build(name, input_size=shape[1:]).eval()
        with torch.no_grad():
            assert model(torch.randn(1, *shape)).shape == (1, 10), name


def test_torchvision_names():
    names = dict(build("resnet18").named_parameters())
    for key in (
        "conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias", "layer4.1.bn2.weight", "fc.weight",
    ):  # fmt: skip
        assert key in names, key
    assert "layer1.0.downsample.0.weight" not in names  # identity shortcut
    r50 = dict(build("resnet50").named_parameters())
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert build("resnet50").layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    assert build("resnet50").layer2[0].conv1.stride == (1, 1)


# --- registry ------------------------------------------------------------------------------


def test_get_entry_accepts_prefix():
    assert get_entry("zoo:lenet") is get_entry("lenet") is ZOO["lenet"]
    assert isinstance(build("zoo:lenet"), nn.Module)


@pytest.mark.parametrize("name", ["resnet99", "zoo:nothing", "", "LeNet"])
def test_unknown_name_lists_candidates(name):
    with pytest.raises(ModelLoadError) as info:
        get_entry(name)
    message = str(info.value)
    assert message.startswith(f"unknown zoo model '{name.removeprefix('zoo:')}'; choose one of: ")
    assert message.endswith(", ".join(NAMES))


def test_build_defaults_in_channels_to_entry():
    assert build("lenet").conv1.in_channels == 1
    assert build("cq").conv1.in_channels == 3
    assert build("cq", in_channels=5).conv1.in_channels == 5
