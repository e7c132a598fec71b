"""Measured time of one module (a layer, a perforated conv, any small ``nn.Module``) compiled on
its own through the path ``compile_graph`` takes, and a persistent cache of such timings.

    ms = measure_ms(nn.Conv2d(64, 64, 3, padding=1), (1, 64, 32, 32))
    cache = TimingCache("timings.json")
    ms = cache.get_or_measure(perforated, (1, 64, 32, 32))   # measured once, then read back

A rate search asks for the time of the same layer at the same rate many times: the cache keys
timings by what decides them (module kind, conv geometry, kept mask, interpolation, input shape,
target, tuning trials, thread count), not by object identity, so it pays for each once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from ..errors import InputError, check_finite
from ..ops.base import conv_geometry, tensor_digest
from ..ops.registry import custom_convert_map
from ..progress import Progress
from ..transform.capture import capture
from .build import compile_module, transform_params
from .exporting import export_static
from .importer import import_program
from .target import target_spec

NUMBER, REPEAT = 5, 10  # runs per timing, timings (the median is reported)


class CompiledModule:
    """``module`` (a layer, any small module, or a whole captured graph) compiled on its own for
    inputs of ``input_shape`` (N, C, H, W), ready to time.

    ``tune_trials``, ``records`` and ``progress`` as in ``compile_graph``. ``example`` is the input it runs on
    (default: seeded random normal; data-dependent ops such as zero prediction need real
    activations). Timing needs the target's device here: CUDA without a GPU is refused. Compile
    once and call ``time_ms`` or ``run`` several times to interleave the timings of several
    modules (fairer on a busy machine).
    """

    def __init__(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        target: str = "llvm",
        tune_trials: int = 0,
        records: str | Path | None = None,
        example: np.ndarray | None = None,
        progress: Progress | None = None,
    ):
        import tvm
        from tvm import relax

        spec = target_spec(target)
        self.device = tvm.cpu(0) if spec["kind"] == "llvm" else tvm.cuda(0)
        if not self.device.exist:
            raise InputError(f"cannot time code for {target}: this machine has no {spec['kind']} device")
        # Export puts every submodule in eval mode: each gets its own mode back. (``train(mode)``
        # on ``module`` would set one mode on all of them, and a wrapper built for timing, in
        # training mode, would put the batch norms it shares with the model in training mode.)
        modes = [(submodule, submodule.training) for submodule in module.modules()]
        try:
            program = export_static(_as_graph(module, tuple(input_shape)), tuple(input_shape))
        finally:
            for submodule, training in modes:
                submodule.training = training
        with tvm.target.Target(spec):  # lowerings pick CPU or GPU kernels by the current target
            mod, params = import_program(program, custom_convert_map())
        executable = compile_module(mod, spec, tune_trials=tune_trials, records=records, progress=progress)
        params = transform_params(executable, params, self.device)
        self.vm = relax.VirtualMachine(executable, self.device)
        if example is None:
            example = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        elif tuple(example.shape) != tuple(input_shape):
            raise InputError(f"example input has shape {tuple(example.shape)}; compiled for {tuple(input_shape)}")
        example = np.ascontiguousarray(example, dtype=np.float32)
        # Data-dependent ops (zero prediction) would time the NaN path, not the model's.
        check_finite(example, "the example input to time on")
        self.inputs = [tvm.runtime.tensor(a, self.device) for a in (example, *params)]
        self._main = self.vm["main"]

    def run(self) -> None:
        """One inference on the example input, finished (the device synchronised)."""
        self._main(*self.inputs)
        self.device.sync()

    def time_ms(self, number: int = NUMBER, repeat: int = REPEAT) -> float:
        """Median milliseconds of ``repeat`` timings by TVM's ``time_evaluator``, each the mean
        of ``number`` runs."""
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return 1e3 * float(np.median(timer(*self.inputs).results))


def _as_graph(module: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """A graph module as ``compile_graph`` takes it: a graph as it is, a layer as a leaf (as in
    rewritten models)."""
    if isinstance(module, fx.GraphModule):
        return module
    return capture(nn.Sequential(module), input_shape).graph_module


def measure_ms(
    module: nn.Module,
    input_shape: tuple[int, ...],
    target: str = "llvm",
    tune_trials: int = 0,
    records: str | Path | None = None,
    number: int = NUMBER,
    repeat: int = REPEAT,
    example: np.ndarray | None = None,
) -> float:
    """Median milliseconds of ``module`` compiled alone for ``input_shape`` (see
    ``CompiledModule``): ``measure_ms(nn.Conv2d(64, 64, 3), (1, 64, 32, 32))``."""
    return CompiledModule(module, input_shape, target, tune_trials, records, example).time_ms(number, repeat)


def signature(module: nn.Module, input_shape: tuple[int, ...], target: str = "llvm", tune_trials: int = 0) -> dict:
    """What decides the time of ``module``, as JSON data: equal signatures time the same.

    Weights do not count (they do not change the work); masks and tables do (a hash of them).
    """
    spec = target_spec(target)
    common = {
        "input_shape": [int(s) for s in input_shape],
        "target": spec,
        "tune_trials": int(tune_trials),
        "threads": os.environ.get("TVM_NUM_THREADS", "all"),
    }
    if hasattr(module, "timing_key"):  # an inserted op: what its time depends on, not its weights
        return {**module.timing_key(), **common}
    if isinstance(module, nn.Conv2d):
        return {"kind": "conv2d", "conv": conv_geometry(module), **common}
    buffers = {name: tensor_digest(buffer) for name, buffer in module.named_buffers()}
    parameters = {name: list(p.shape) for name, p in module.named_parameters()}
    return {"kind": f"{type(module).__module__}.{type(module).__qualname__}", "repr": repr(module),
            "buffers": buffers, "parameters": parameters, **common}  # fmt: skip


def cache_key(signature: dict) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:20]


_MS = {"type": "number", "minimum": 0, "maximum": 1e12}
_CACHE_SCHEMA = {
    "type": "object",
    "required": ["timings"],
    "properties": {"timings": {"type": "object", "additionalProperties": {"type": "object", "required": ["ms"],
                                                                          "properties": {"ms": _MS}}}},  # fmt: skip
}


class TimingCache:
    """Measured milliseconds kept in a JSON file (or in memory), keyed by ``signature``.

    ``get_or_measure`` compiles and times only what the file does not hold yet, and writes the
    file after each new timing, so an interrupted search keeps what it paid for.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None  # None: kept in memory only
        self.entries: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            from ..schema import read_json

            try:
                self.entries = read_json(self.path, _CACHE_SCHEMA, "timing cache")["timings"]
            except InputError as error:
                raise InputError(f"{error}; it is not a timing cache: remove it to time again") from None
        self.hits = self.misses = 0

    def get_or_measure(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        target: str = "llvm",
        tune_trials: int = 0,
        records: str | Path | None = None,
        example: np.ndarray | None = None,
    ) -> float:
        """The cached time of ``module`` (ms), measured with ``measure_ms`` on a miss. With
        ``example`` (the input it runs on, for data-dependent ops) its digest joins the key."""
        key_data = signature(module, input_shape, target, tune_trials)
        if example is not None:
            key_data["example"] = tensor_digest(torch.as_tensor(example))
        key = cache_key(key_data)
        if key in self.entries:
            self.hits += 1
            return self.entries[key]["ms"]
        self.misses += 1
        ms = measure_ms(module, input_shape, target, tune_trials, records, example=example)
        self.entries[key] = {"ms": ms, "signature": key_data}
        if self.path is not None:
            self._save()
        return ms

    def _save(self) -> None:
        from ..storage import write_text  # never a half-written cache; a failed write is one line

        write_text(self.path, json.dumps({"timings": self.entries}, indent=1, sort_keys=True))
