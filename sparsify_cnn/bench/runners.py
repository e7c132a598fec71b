"""One module on one input, ready to run on a backend: PyTorch eager, ``torch.compile``, ONNX
Runtime (what users run on CPU; when installed), or TVM (compiled through the same pipeline as
the artifact, tuned with the same budget).

    run = make_runner("tvm", conv, x, TVMSettings(tune_trials=64, records="records"))
    run()   # one inference, finished (CUDA synchronised)

A backend that cannot run the module raises ``BackendUnavailable`` with a one-line reason, so
a benchmark table shows "n/a (reason)" rather than failing as a whole.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import SparsifyError
from ..progress import Progress

BACKENDS = ("eager", "compile", "ort", "tvm")


class BackendUnavailable(Exception):
    """This backend cannot run this module here; the message says why in one line."""


@dataclass(frozen=True)
class TVMSettings:
    """How TVM compiles what is timed: target, MetaSchedule trials (0: default schedules or the
    best already in ``records``) and the records directory shared by every compile."""

    target: str = "llvm"
    tune_trials: int = 0
    records: str | Path | None = None

    @property
    def kind(self) -> str:
        return self.target.partition(":")[0]


def make_runner(backend: str, module: nn.Module, x: torch.Tensor, tvm: TVMSettings,
                progress: Progress | None = None) -> Callable[[], None]:  # fmt: skip
    """A callable running ``module`` on ``x`` once with ``backend`` (see ``BACKENDS``);
    ``progress`` hears of TVM's tuning."""
    if backend == "eager":
        return _torch_runner(module, x, tvm.kind, compiled=False)
    if backend == "compile":
        return _torch_runner(module, x, tvm.kind, compiled=True)
    if backend == "ort":
        return _ort_runner(module, x, tvm.kind)
    if backend == "tvm":
        return _tvm_runner(module, x, tvm, progress)
    raise ValueError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def _torch_runner(module: nn.Module, x: torch.Tensor, kind: str, compiled: bool) -> Callable[[], None]:
    device = torch.device("cuda" if kind == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device for PyTorch here")
    if device.type != "cpu":
        module = copy.deepcopy(module).to(device)
    x = x.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        fn = module
        if compiled:
            torch._dynamo.reset()  # a fresh cache per module: earlier modules' guards do not interfere
            fn = torch.compile(module)

        def run() -> None:
            with torch.no_grad():
                fn(x)
            sync()

        run()  # compiles now, so that a failure is reported here and compile time is not timed
    except Exception as error:  # any failure of a backend is a row note, not a crash
        raise BackendUnavailable(_one_line(error)) from error
    return run


def _ort_runner(module: nn.Module, x: torch.Tensor, kind: str) -> Callable[[], None]:
    """ONNX Runtime on the module exported to ONNX (torch's exporter), with PyTorch's thread count,
    every graph optimisation on."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime onnxscript)") from None
    provider = "CUDAExecutionProvider" if kind == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise BackendUnavailable(f"this onnxruntime has no {provider}")
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # an exported program's graph cannot leave training mode, and needs not: its ops are inference ops
            warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(module, (x,), path, dynamo=True, external_data=False)
            model = path.read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model, options, providers=[provider])
        feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}

        def run() -> None:
            session.run(None, feed)

        run()
    except Exception as error:  # an op ONNX cannot express (an inserted op) or a failed export
        raise BackendUnavailable(_one_line(error)) from error
    return run


def _tvm_runner(module: nn.Module, x: torch.Tensor, settings: TVMSettings,
                progress: Progress | None) -> Callable[[], None]:  # fmt: skip
    from ..codegen.measure import CompiledModule

    try:
        compiled = CompiledModule(module, tuple(x.shape), settings.target, settings.tune_trials, settings.records,
                                  example=x.detach().cpu().numpy(), progress=progress)  # fmt: skip
    except SparsifyError as error:
        raise BackendUnavailable(str(error)) from error
    return compiled.run


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]
