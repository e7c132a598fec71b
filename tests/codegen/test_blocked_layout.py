"""Channel-blocked layouts on CPU: which convs take one, the register tiles of their kernels, and
a network that runs blocked from its first conv to its classifier (its weights packed), with
layout changes only where it enters and leaves, and matches torch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsify_cnn.codegen.blocked_layout import conv_layouts
from sparsify_cnn.codegen.cpu_schedules import REGISTERS, REGISTERS_AVX512, blocked_columns, blocked_tile


def test_convs_take_the_blocked_layout_their_channels_allow():
    assert conv_layouts(64, 128, groups=1) == ["NCHW8c", "OIHW8i8o", "NCHW8c"]
    assert conv_layouts(3, 64, groups=1) == ["NCHW3c", "OIHW3i8o", "NCHW8c"]  # a first layer
    assert conv_layouts(96, 96, groups=96) == ["NCHW8c", "OIHW1i8o", "NCHW8c"]  # depthwise
    assert conv_layouts(64, 100, groups=1) is None  # output channels not whole blocks
    assert conv_layouts(12, 64, groups=1) is None  # more input channels than a block, not whole blocks
    assert conv_layouts(64, 64, groups=4) == ["NCHW8c", "OIHW8i8o", "NCHW8c"]  # grouped, 16 a group
    assert conv_layouts(48, 48, groups=4) is None  # 12 a group: no whole blocks, stays NCHW
    assert conv_layouts(8, 16, groups=8) is None  # a depthwise multiplier of 2


@given(st.integers(1, 128), st.integers(1, 230), st.sampled_from([REGISTERS, REGISTERS_AVX512]))
def test_register_tiles_divide_the_output_and_fit_the_registers(chunks, columns, registers):
    chunk_tile, column_tile = blocked_tile(chunks, columns, registers)
    assert chunks % chunk_tile == 0 and columns % column_tile == 0
    assert chunk_tile in (1, 2) and chunk_tile * column_tile <= registers


def test_register_tiles_favour_loads_shared_by_many_multiply_adds():
    assert blocked_tile(8, 56, REGISTERS_AVX512) == (2, 8)  # 16 accumulators, 10 loads per step
    assert blocked_tile(64, 7, REGISTERS) == (1, 7)  # two blocks would leave one column
    assert blocked_tile(1, 112, REGISTERS) == (1, 8)


@given(st.integers(1, 7000), st.sampled_from([REGISTERS, REGISTERS_AVX512]))
def test_padded_columns_give_two_block_tiles_of_at_least_a_quarter_of_the_registers(count, registers):
    padded = blocked_columns(count, registers)
    chunk_tile, column_tile = blocked_tile(2, padded, registers)
    assert chunk_tile == 2 and column_tile >= registers // 4
    assert count <= padded < count + registers // 4  # fewer wasted columns than the narrowest tile


def test_padded_columns_waste_nothing_when_a_tile_divides_them():
    assert blocked_columns(1521, REGISTERS_AVX512) == 1521  # 39 x 39 kept positions: tiles of 9
    assert blocked_columns(16, REGISTERS_AVX512) == 16
    assert blocked_columns(361, REGISTERS_AVX512) == 363  # 19 x 19: a prime's square, tiles of 11


class Net(nn.Module):
    """Every kind of conv that takes a blocked layout, with ReLU6, a residual add, pooling and a
    classifier of two linear layers after them."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pointwise = nn.Conv2d(16, 16, 1, bias=False)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.hidden = nn.Linear(32, 16)  # 16 columns: weights packed in blocks of 16
        self.head = nn.Linear(16, 5)  # 5 columns: no whole block, left as it is

    def forward(self, x):
        x = nn.functional.relu6(self.bn(self.stem(x)))
        x = x + self.pointwise(nn.functional.relu6(self.depthwise(x)))
        x = nn.functional.max_pool2d(torch.relu(self.down(x)), 2)
        return self.head(torch.relu(self.hidden(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))))


def _calls(ir_dump, name: str) -> int:
    """Calls in ``main`` of a dumped module to kernels whose name holds ``name``."""
    text = ir_dump.read_text()
    main = text[text.index("def main(") :]
    main = main[: main.find("\n    @") if "\n    @" in main else None]
    kernels = [line.split("R.call_tir(")[1].split(",")[0] for line in main.splitlines() if "R.call_tir(" in line]
    return sum(name in kernel for kernel in kernels)


@pytest.mark.tvm
def test_a_network_runs_blocked_end_to_end_and_matches_torch(tmp_path):
    from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
    from sparsify_cnn.runtime import load
    from sparsify_cnn.transform.capture import capture

    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    shape = (2, 3, 30, 30)
    graph = capture(model, shape).graph_module
    x = torch.randn(*shape)
    result = compile_graph(graph, shape, tmp_path / "out", check_inputs=x, dump_ir=tmp_path / "ir")
    assert result.relative_diff <= TOLERANCE
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(load(tmp_path / "out")(x.numpy())), model(x), rtol=1e-4, atol=1e-5)

    fused = tmp_path / "ir" / "01_legalize_and_fuse_after.py"
    assert _calls(fused, "conv2d_NCHWc") == 4  # every conv blocked, the depthwise one too
    assert _calls(fused, "clip") == 0  # ReLU6 as maximum and minimum, fused into the convs
    assert _calls(fused, "dense_packed") == 1
    # activations change layout where the network enters (NCHW3c) and leaves (before flatten);
    # the weights' transforms run once, at compile time, outside main
    assert _calls(tmp_path / "ir" / "04_build_before.py", "layout_transform") == 2


class Attention(nn.Module):
    """ViT's patches and attention: ``nn.MultiheadAttention`` squeezes a negative axis, which
    TVM's layout conversion cannot take (``positive_squeeze_axes``)."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 16, 4, stride=4)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        y = self.patches(x).flatten(2).transpose(1, 2)
        return self.attention(y, y, y, need_weights=False)[0].mean(1)


@pytest.mark.tvm
def test_a_conv_before_attention_compiles_blocked_and_matches_torch(tmp_path):
    from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
    from sparsify_cnn.runtime import load
    from sparsify_cnn.transform.capture import capture

    torch.manual_seed(0)
    model, shape = Attention().eval(), (2, 3, 16, 16)
    x = torch.randn(*shape)
    result = compile_graph(capture(model, shape, method="export").graph_module, shape, tmp_path / "out",
                           check_inputs=x, dump_ir=tmp_path / "ir")  # fmt: skip
    assert result.relative_diff <= TOLERANCE
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(load(tmp_path / "out")(x.numpy())), model(x), rtol=1e-4, atol=1e-5)
    assert _calls(tmp_path / "ir" / "01_legalize_and_fuse_after.py", "conv2d_NCHWc") == 1


class SSCNet(nn.Module):
    """SSC layers as the technique writes them: a k x k branch of narrow groups (4 channels a
    group, fewer than a block) and one of whole blocks, each with a pointwise branch reading the
    input channel-shuffled."""

    def __init__(self):
        super().__init__()
        from sparsify_cnn.techniques.ssc.op import SSCConv

        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.narrow = SSCConv(64, 64, 3, padding=1, g=16, p=2)
        self.wide = SSCConv(64, 64, 3, stride=2, padding=1, g=4, p=4)

    def forward(self, x):
        return torch.relu(self.wide(torch.relu(self.narrow(torch.relu(self.stem(x))))))


@pytest.mark.tvm
def test_ssc_layers_run_blocked_end_to_end_and_match_torch(tmp_path):
    from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
    from sparsify_cnn.runtime import load
    from sparsify_cnn.transform.capture import capture

    torch.manual_seed(0)
    model = SSCNet().eval()
    shape = (2, 3, 10, 10)
    x = torch.randn(*shape)
    result = compile_graph(capture(model, shape).graph_module, shape, tmp_path / "out", check_inputs=x,
                           dump_ir=tmp_path / "ir")  # fmt: skip
    assert result.relative_diff <= TOLERANCE
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(load(tmp_path / "out")(x.numpy())), model(x), rtol=1e-4, atol=1e-5)

    fused = tmp_path / "ir" / "01_legalize_and_fuse_after.py"
    assert _calls(fused, "shuffled_conv2d_NCHWc") == 2  # the pointwise branches read the shuffle in place
    assert _calls(fused, "conv2d_NCHWc") == 5  # the narrow groups merged into whole blocks
    built = tmp_path / "ir" / "04_build_before.py"  # the weights' kernels lifted out of main
    assert _calls(built, "reshape") == _calls(built, "transpose") == 0  # no shuffle copies
    assert _calls(built, "layout_transform") == 2  # in and out only


def test_narrow_groups_merge_into_whole_blocks_only_where_the_channels_allow():
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from sparsify_cnn.codegen.blocked_layout import merge_narrow_groups

    def module(channels: int, groups: int):
        @tvm.script.ir_module
        class Module:
            @R.function
            def main(x: R.Tensor((1, channels, 6, 6), "float32"),
                     w: R.Tensor((channels, channels // groups, 3, 3), "float32")):  # fmt: skip
                R.func_attr({"num_input": 1})
                with R.dataflow():
                    y = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], groups=groups)
                    R.output(y)
                return y

        return Module

    def groups_after(channels, groups):
        mod = merge_narrow_groups()(module(channels, groups))
        convs = [b.value for b in mod["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)
                 and b.value.op.name == "relax.nn.conv2d"]  # fmt: skip
        return int(convs[0].attrs.groups)

    assert groups_after(64, 16) == 8  # 4 a group: two groups a block
    assert groups_after(64, 32) == 8  # 2 a group: four
    assert groups_after(64, 4) == 4  # 16 a group: whole blocks already
    assert groups_after(64, 64) == 64  # depthwise has its own kernel
    assert groups_after(24, 8) == 8  # 3 a group: no whole block
