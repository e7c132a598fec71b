"""The runtime's CPU check: LLVM feature names (as manifests record them) against the flags Linux
prints in /proc/cpuinfo, on the real flags of several CPU generations and on this machine."""

import re
from pathlib import Path

import pytest

from sparsify_cnn.codegen.artifact import X86_FEATURES, cpu_features, cpuinfo_features, missing_features
from sparsify_cnn.codegen.target import target_spec

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def _real_cpus() -> dict[str, str]:
    """LLVM -mcpu -> that CPU's cpuinfo text, from cpuinfo_flags.txt."""
    text = (Path(__file__).parent / "cpuinfo_flags.txt").read_text()
    blocks = re.split(r"^\[([\w.-]+)\]\n", text, flags=re.M)[1:]
    return dict(zip(blocks[::2], blocks[1::2]))


CPUS = _real_cpus()
AVX2 = {"sse4.1", "sse4.2", "avx", "f16c", "fma", "avx2"}
SKX = AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
ICX = SKX | {"avx512vnni", "avx512vbmi", "avx512vbmi2"}
# Written out by hand from each CPU's documented ISA, independently of X86_FEATURES' flags.
EXPECTED = {
    "haswell": AVX2,
    "skylake-avx512": SKX,
    "cascadelake": SKX | {"avx512vnni"},
    "icelake-server": ICX,
    "sapphirerapids": ICX | {"avx512bf16", "avx512fp16", "avxvnni"},
    "arrowlake-s": AVX2 | {"avxvnni"},
    "znver2": AVX2,
    "znver3": AVX2,
    "znver4": ICX | {"avx512bf16"},
}


def test_the_data_holds_every_generation_asked_for():
    assert set(CPUS) == set(EXPECTED)
    assert all(text.count("\nflags\t\t: ") == 1 for text in CPUS.values())


@pytest.mark.parametrize("mcpu", sorted(EXPECTED))
def test_real_cpuinfo_flags_give_the_cpus_features(mcpu):
    assert cpuinfo_features(CPUS[mcpu]) == EXPECTED[mcpu]


@pytest.mark.parametrize("mcpu", sorted(EXPECTED))
def test_an_artifact_compiled_on_a_cpu_loads_on_it(mcpu):
    # What the manifest records for code built on that machine (LLVM detects mcpu there).
    recorded = cpu_features({"kind": "llvm", "mcpu": mcpu})
    assert set(recorded) == EXPECTED[mcpu]
    assert missing_features(recorded, CPUS[mcpu]) == []


@pytest.mark.parametrize(
    "built_for, run_on, missing",
    [
        ("cascadelake", "haswell", ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512vnni"]),
        ("cascadelake", "skylake-avx512", ["avx512vnni"]),
        ("sapphirerapids", "icelake-server", ["avx512bf16", "avx512fp16", "avxvnni"]),
        ("znver4", "znver3", ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512vnni",
                              "avx512bf16", "avx512vbmi", "avx512vbmi2"]),
        ("znver4", "sapphirerapids", []),
        ("icelake-server", "znver4", []),
        ("haswell", "znver2", []),
        ("arrowlake-s", "znver4", ["avxvnni"]),
    ],
)  # fmt: skip
def test_an_artifact_for_a_newer_cpu_lists_what_an_older_one_lacks(built_for, run_on, missing):
    assert missing_features(cpu_features({"kind": "llvm", "mcpu": built_for}), CPUS[run_on]) == missing


def test_every_flag_in_the_table_is_one_a_real_cpu_prints():
    printed = set().union(*(set(text.split("flags\t\t: ", 1)[1].split()) for text in CPUS.values()))
    assert set(X86_FEATURES.values()) <= printed


def test_unknown_names_count_as_missing_and_no_flags_means_nothing_to_check():
    assert missing_features(["sse4.2", "not_a_cpu_feature"], CPUS["haswell"]) == ["not_a_cpu_feature"]
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
    assert cpuinfo_features(arm) is None and missing_features(["avx2"], arm) == []


def test_a_feature_counts_only_when_every_cpu_lists_it():
    two = "processor\t: 0\nflags\t\t: sse4_2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: sse4_2 avx fma\n"
    assert cpuinfo_features(two) == {"sse4.2", "avx", "fma"}
    assert missing_features(["avx", "avx2"], two) == ["avx2"]


def test_what_this_machine_records_it_finds_in_its_own_cpuinfo():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    if cpuinfo_features(text) is None:
        pytest.skip("this machine's cpuinfo lists no x86 flags")
    recorded = cpu_features(target_spec("llvm"))
    assert recorded, "code for this CPU uses SIMD features, so the manifest should list some"
    assert missing_features(recorded, text) == []
