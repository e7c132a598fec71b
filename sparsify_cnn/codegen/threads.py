"""How many threads TVM's CPU runtime runs kernels on.

Unless ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``) is set, TVM's runtime starts half the
hardware threads on x86, assuming two per core. On a machine without SMT that is half the
machine (one thread on two cores), while PyTorch uses every core: compiled models would be
timed, and deployed, on half the cores their eager baselines use. Before any kernel runs,
this package sets ``TVM_NUM_THREADS`` to the physical cores the process may run on, as
PyTorch does; a value the user set is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_SYSFS = Path("/sys/devices/system/cpu")


def physical_cores(cpus: set[int] | None = None, sysfs: Path = CPU_SYSFS) -> int:
    """Distinct (package, core) pairs among ``cpus`` (default: this process's affinity); the
    CPU count where the topology cannot be read."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_tvm_threads() -> None:
    """Set ``TVM_NUM_THREADS`` to the physical cores unless the user chose a thread count."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())
