"""MACs per image of zoo models, by hand, against the package's accounting.

conv MACs = C_out * H_out * W_out * (C_in / groups) * kh * kw; linear MACs = in * out.
"""

from __future__ import annotations

import pytest

from sparsify_cnn.models import ZOO, build
from sparsify_cnn.transform.accounting import account
from sparsify_cnn.transform.capture import capture


def _rows(name, **options):
    model = build(name, **options)
    c, h, w = ZOO[name].input_shape
    acc = account(capture(model, (1, c, h, w)))
    return acc, [(layer.name, layer.kind, layer.macs, layer.params) for layer in acc.layers]


def test_lenet_macs():
    expected = [
        # conv1: 28 - 5 + 1 = 24;            20*24*24*1*25 = 288,000;   params 20*25 + 20
        ("conv1", "conv", 288_000, 520),
        # pool1 -> 12; conv2: 12 - 5 + 1 = 8; 50*8*8*20*25 = 1,600,000; params 50*20*25 + 50
        ("conv2", "conv", 1_600_000, 25_050),
        # pool2 -> 4; ip1: 50*4*4 = 800 in;  800*500 = 400,000
        ("ip1", "linear", 400_000, 400_500),
        # ip2: 500*10 = 5,000
        ("ip2", "linear", 5_000, 5_010),
    ]
    acc, rows = _rows("lenet")
    assert rows == expected
    assert acc.total_macs == 288_000 + 1_600_000 + 400_000 + 5_000 == 2_293_000
    # the conv ReLUs add no MACs: the exact Caffe net counts the same
    assert _rows("lenet_caffe")[0].total_macs == 2_293_000


def test_cq_macs():
    expected = [
        # conv1 5x5 pad 2 keeps 32x32: 32*32*32*3*25 = 2,457,600
        ("conv1", "conv", 2_457_600, 2_432),
        # pool1 -> 16 (ceil); conv2: 32*16*16*32*25 = 6,553,600
        ("conv2", "conv", 6_553_600, 25_632),
        # pool2 -> 8; conv3: 64*8*8*32*25 = 3,276,800
        ("conv3", "conv", 3_276_800, 51_264),
        # pool3 -> 4; ip1: 64*4*4 = 1,024 in; 1,024*64 = 65,536
        ("ip1", "linear", 65_536, 65_600),
        # ip2: 64*10 = 640
        ("ip2", "linear", 640, 650),
    ]
    acc, rows = _rows("cq")
    assert rows == expected
    assert acc.total_macs == 2_457_600 + 6_553_600 + 3_276_800 + 65_536 + 640 == 12_354_176


def _resnet18_expected():
    rows = [
        # stem: 224 -> (224 + 6 - 7)//2 + 1 = 112; 64*112*112*3*49 = 118,013,952
        ("conv1", "conv", 64 * 112 * 112 * 3 * 49, 64 * 3 * 49),
    ]
    # maxpool -> 56; stage widths and output sizes: 64@56, 128@28, 256@14, 512@7
    cin = 64
    for stage, (width, size) in enumerate(((64, 56), (128, 28), (256, 14), (512, 7)), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            block_in = cin if block == 0 else width
            out = width * size * size  # output elements of every conv in the stage
            rows.append((f"{prefix}.conv1", "conv", out * block_in * 9, width * block_in * 9))
            rows.append((f"{prefix}.conv2", "conv", out * width * 9, width * width * 9))
            if block == 0 and stage > 1:  # 1x1 stride-2 projection, after conv2 as in torchvision
                rows.append((f"{prefix}.downsample.0", "conv", out * block_in, width * block_in))
        cin = width
    rows.append(("fc", "linear", 512 * 1000, 512 * 1000 + 1000))
    return rows


def test_resnet18_macs():
    expected = _resnet18_expected()
    # spot checks of the table above, written out:
    assert expected[1] == ("layer1.0.conv1", "conv", 64 * 56 * 56 * 64 * 9, 36_864)  # 115,605,504
    assert expected[1][2] == 115_605_504
    assert expected[5] == ("layer2.0.conv1", "conv", 57_802_752, 73_728)  # 128*28*28*64*9
    assert expected[7] == ("layer2.0.downsample.0", "conv", 6_422_528, 8_192)  # 128*28*28*64
    # total: stem 118,013,952
    #   + stage 1: 4 * 115,605,504                                  = 462,422,016
    #   + stages 2-4, each: 57,802,752 + 3 * 115,605,504 + 6,422,528 = 411,041,792 (x3)
    #   + fc 512,000
    total = 118_013_952 + 462_422_016 + 3 * 411_041_792 + 512_000
    assert total == 1_814_073_344
    assert sum(row[2] for row in expected) == total

    acc, rows = _rows("resnet18", num_classes=1000)
    assert rows == expected
    assert acc.total_macs == total
    assert acc.total_params == 11_689_512


@pytest.mark.parametrize(
    "name,total",
    [
        # mlp: 784*500 + 500*10 = 397,000
        ("mlp", 397_000),
        # alexlrn / alexbn: CQ's convs + 1,024*10 = 12,288,000 + 10,240
        ("alexlrn", 12_298_240),
        ("alexbn", 12_298_240),
        # nin: conv1 192*32*32*3*25 = 14,745,600; cccp1 160*32*32*192 = 31,457,280;
        #   cccp2 96*32*32*160 = 15,728,640; (pool -> 16) conv2 192*16*16*96*25 = 117,964,800;
        #   cccp3, cccp4 192*16*16*192 = 9,437,184 each; (pool -> 8) conv3 192*8*8*192*9
        #   = 21,233,664; cccp5 192*8*8*192 = 2,359,296; cccp6 10*8*8*192 = 122,880
        ("nin", 14_745_600 + 31_457_280 + 15_728_640 + 117_964_800 + 2 * 9_437_184
         + 21_233_664 + 2_359_296 + 122_880),
        # vgg16: 64*32*32*3*9 = 1,769,472; 64*32*32*64*9 = 37,748,736;
        #   128*16*16*64*9 = 18,874,368; 128*16*16*128*9 = 37,748,736;
        #   256*8*8*128*9 = 18,874,368; 2 * 256*8*8*256*9 = 75,497,472;
        #   512*4*4*256*9 = 18,874,368; 2 * 512*4*4*512*9 = 75,497,472;
        #   3 * 512*2*2*512*9 = 28,311,552; linear 512*10 = 5,120
        ("vgg16", 1_769_472 + 37_748_736 + 18_874_368 + 37_748_736 + 18_874_368 + 75_497_472
         + 18_874_368 + 75_497_472 + 28_311_552 + 5_120),
    ],
)
def test_model_macs(name, total):
    assert _rows(name)[0].total_macs == total


def test_hand_totals():
    assert 14_745_600 + 31_457_280 + 15_728_640 + 117_964_800 + 2 * 9_437_184 + 21_233_664 \
        + 2_359_296 + 122_880 == 222_486_528  # nin
    assert 1_769_472 + 37_748_736 + 18_874_368 + 37_748_736 + 18_874_368 + 75_497_472 \
        + 18_874_368 + 75_497_472 + 28_311_552 + 5_120 == 313_201_664  # vgg16
