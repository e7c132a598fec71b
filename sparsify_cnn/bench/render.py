"""A benchmark result as a markdown table: for each model or layer and batch size, the dense
row, then the transformed row, MACs and theoretical speedup beside the measured times and the
measured speedup over the chosen baseline."""

from __future__ import annotations

from .runners import BACKENDS
from .suite import BenchResult, Timings

HEADERS = {"eager": "eager ms", "compile": "torch.compile ms", "ort": "ONNX Runtime ms", "tvm": "TVM ms"}


def render_markdown(result: BenchResult) -> str:
    config = result.config
    backends = [b for b in BACKENDS if b in config.backends]
    tvm = config.tvm
    tuning = f"{tvm.tune_trials} MetaSchedule trials" if tvm.tune_trials else "default schedules (no tuning)"
    title = (f"{result.label}: {result.technique or 'dense'}; target {tvm.target}, TVM {tuning}; threads torch "
             f"{result.threads['torch']}, TVM {result.threads['tvm']}; median of {config.rounds} rounds of "
             f"{config.number} after {config.warmup} warm-up runs")  # fmt: skip
    against = "the fastest dense backend" if config.baseline == "fastest" else config.baseline
    header = (f"| scope | name | variant | batch | MACs/image | theoretical | {' | '.join(HEADERS[b] for b in backends)} "
              f"| measured vs {against} |")  # fmt: skip
    lines = [
        title,
        "",
        header,
        "|---|---|---|---|---|---|" + "---|" * len(backends) + "---|",
    ]
    notes: dict[str, None] = {}
    for entry in result.entries:
        rows = [("dense", entry.dense, entry.dense_macs, 1.0, entry.dense_speedup(config.baseline))]
        if entry.transformed is not None:
            rows.append((entry.kind, entry.transformed, entry.macs, entry.theoretical, entry.speedup(config.baseline)))
        for variant, timings, macs, theoretical, speedup in rows:
            cells = [_ms(timings, b, notes) for b in backends]
            measured = "n/a" if speedup is None else f"{speedup:.2f}x"
            if speedup is not None and config.baseline == "fastest" and variant == "dense":
                measured += f" ({HEADERS[entry.fastest_dense()].removesuffix(' ms')} fastest)"
            if variant != "dense" and entry.below_crossover:
                measured += " (below crossover)"
            lines.append(f"| {entry.scope} | {entry.name} | {variant} | {entry.batch} | {macs:,} | {theoretical:.2f}x | "
                         f"{' | '.join(cells)} | {measured} |")  # fmt: skip
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _ms(timings: Timings, backend: str, notes: dict[str, None]) -> str:
    ms = timings.ms.get(backend)
    if ms is not None:
        return f"{ms:.3f}"
    note = timings.notes.get(backend)
    if note is None:
        return "-"
    notes[f"{backend}: {note}"] = None
    return "n/a"
