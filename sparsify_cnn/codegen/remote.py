"""Tuning on the deployment machines: MetaSchedule measures its trials through TVM's RPC tracker,
on a server registered under a key (``python -m tvm.exec.rpc_server --tracker HOST:PORT --key K``
on each machine), and the check against the default schedule times both kernels there too.

    sparsify compile model.pt2 --target llvm:znver4 --tune-trials 512 --rpc-tracker 10.0.0.5:9190 --rpc-key epyc --out a/

Kernels are compiled here for ``--target`` (name the deployment CPU when it differs from this
one) and uploaded as shared libraries; nothing is run on this machine.
"""

from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

CONNECT_SECONDS = 10  # to reach the tracker at all
SESSION_SECONDS = 600  # a session's lifetime on the server: one trial batch, or one kernel's timing


@dataclass(frozen=True)
class RemoteDevice:
    """Servers registered with the tracker at ``host:port`` under ``key``."""

    host: str
    port: int
    key: str
    priority: int = 1

    @classmethod
    def parse(cls, tracker: str, key: str | None) -> RemoteDevice:
        """From ``--rpc-tracker HOST:PORT`` and ``--rpc-key K``; a bad value is one InputError."""
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"--rpc-tracker '{tracker}' is not HOST:PORT")
        if not key:
            raise InputError("--rpc-tracker needs --rpc-key: the key the deployment machines' servers registered")
        return cls(host, int(port), key)

    def __str__(self) -> str:
        return f"key '{self.key}' at the tracker {self.host}:{self.port}"

    def check(self) -> int:
        """Servers the tracker has for the key (free or busy); an InputError, before any tuning,
        when the tracker cannot be reached or has none."""
        from tvm import rpc

        try:  # TVM retries an unreachable tracker for a minute: a plain connection says it at once
            socket.create_connection((self.host, self.port), timeout=CONNECT_SECONDS).close()
            summary = rpc.connect_tracker(self.host, self.port).summary()
        except (OSError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"cannot reach the RPC tracker {self.host}:{self.port}: {first}") from None
        queue = summary.get("queue_info", {}).get(self.key, {})
        registered = sum(1 for server in summary.get("server_info", []) if server.get("key", "").split(":")[-1] == self.key)
        servers = max(registered, int(queue.get("free", 0)))  # busy servers are registered, not free
        if not servers:
            known = sorted(summary.get("queue_info", {})) or ["none"]
            raise InputError(f"the RPC tracker {self.host}:{self.port} has no server with key '{self.key}' "
                             f"(keys there: {', '.join(known)})")  # fmt: skip
        return servers

    def runner(self, evaluator_config=None):
        """MetaSchedule's runner measuring on these servers."""
        from tvm.s_tir import meta_schedule as ms

        config = ms.runner.RPCConfig(tracker_host=self.host, tracker_port=self.port, tracker_key=self.key,
                                     session_priority=self.priority, session_timeout_sec=SESSION_SECONDS)  # fmt: skip
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator_config)

    def kernel_seconds(self, func, target, number: int = 3, repeat: int = 5) -> float:
        """``codegen.tuning.kernel_seconds`` on a server: one PrimFunc compiled here for
        ``target``, uploaded, and timed there on random inputs."""
        import tvm
        from tvm import rpc

        from .tuning import kernel_alone, kernel_arguments

        alone = kernel_alone(func)
        kernel, arguments = tvm.compile(alone, target=target), kernel_arguments(alone)
        session = rpc.connect_tracker(self.host, self.port).request(self.key, self.priority, SESSION_SECONDS)
        with tempfile.TemporaryDirectory(prefix="sparsify-rpc-") as folder:
            library = Path(folder) / "kernel.tar"
            kernel.export_library(str(library))
            session.upload(str(library))
        remote = session.load_module(library.name)
        device = session.cuda(0) if target.kind.name == "cuda" else session.cpu(0)
        args = [tvm.runtime.tensor(values, device=device) for values in arguments]
        timer = remote.time_evaluator("main", device, number=number, repeat=repeat)
        return min(timer(*args).results)
