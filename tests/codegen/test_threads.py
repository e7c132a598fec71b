"""TVM's thread pool gets the physical cores unless the user chose a thread count."""

import os
import subprocess
import sys

import pytest

from sparsify_cnn.codegen.threads import default_tvm_threads, physical_cores

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def _sysfs(root, cores_of_cpus):
    for cpu, (package, core) in enumerate(cores_of_cpus):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_physical_cores_counts_distinct_cores(tmp_path):
    smt = _sysfs(tmp_path / "smt", [(0, 0), (0, 1), (0, 0), (0, 1)])  # 2 cores, 2 threads each
    assert physical_cores({0, 1, 2, 3}, smt) == 2
    assert physical_cores({0, 2}, smt) == 1  # one core's two threads
    two_sockets = _sysfs(tmp_path / "sockets", [(0, 0), (1, 0)])  # same core id, other package
    assert physical_cores({0, 1}, two_sockets) == 2


def test_physical_cores_without_topology_counts_cpus(tmp_path):
    assert physical_cores({0, 1, 2}, tmp_path) == 3


def test_user_thread_count_is_kept(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "7")
    default_tvm_threads()
    assert os.environ["TVM_NUM_THREADS"] == "7"
    monkeypatch.delenv("TVM_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # TVM reads this one too
    default_tvm_threads()
    assert "TVM_NUM_THREADS" not in os.environ


def test_tvm_runs_on_the_physical_cores():
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = "import sparsify_cnn.codegen, tvm; print(tvm.get_global_func('runtime.NumThreads')())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) == physical_cores()
