"""Render accounting tables as Markdown (printed by the CLI and written into reports)."""

from __future__ import annotations

from ..transform.accounting import Accounting


def human(count: float) -> str:
    """1234567 -> '1.23 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f}"


def accounting_markdown(acc: Accounting) -> str:
    """A per-layer table (shapes per image) and a totals row; performed MACs appear when a
    layer performs fewer than its dense MACs."""
    transformed = any(row.performed_macs != row.macs for row in acc.layers)
    header = ["layer", "kind", "output", "params", "MACs", "% of MACs"]
    if transformed:
        header += ["performed MACs", "saved"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    total = acc.total_macs or 1
    for row in acc.layers:
        cells = [
            f"`{row.name}`",
            row.kind,
            "x".join(map(str, row.output_shape[1:])),
            f"{row.params:,}",
            f"{row.macs:,}",
            f"{100 * row.macs / total:.1f}",
        ]
        if transformed:
            measured = "" if row.exact else " (measured)"
            cells += [f"{row.performed_macs:,}{measured}", f"{100 * row.saved_fraction:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    totals = ["**total**", "", "", f"{acc.total_params:,}", f"{acc.total_macs:,}", "100.0"]
    if transformed:
        saved = 1 - acc.total_performed_macs / total
        totals += [f"{acc.total_performed_macs:,}", f"{100 * saved:.1f}%"]
    lines.append("| " + " | ".join(totals) + " |")
    lines.append("")
    lines.append(
        f"{len(acc.layers)} conv/linear layers, {human(acc.total_params)} parameters "
        f"(all, batch norm included), {human(acc.total_macs)} MACs per image."
    )
    return "\n".join(lines)


def crossover_markdown(crossover: dict | None) -> list[str]:
    """The crossover section of a job's report: each transformed layer compiled alone, dense
    against transformed, and which layers were left dense because they were not faster."""
    if crossover is None:
        return ["", "## Crossover", "", "Not checked (no target to time on here: `--target none`, a target "
                "without its device here, or `--no-crossover`)."]  # fmt: skip
    lines = ["", "## Crossover", "",
             f"Each transformed layer and its dense layer compiled alone for {crossover['target']} at batch "
             f"{crossover['batch']}, timed on the activations that reach it; a layer that is not faster is left dense, "
             "unless the plan then loses more accuracy on the calibration split than epsilon allows: the layers "
             "closest to the crossover then keep their kernels. *Against the fastest dense* sets the transformed "
             "kernel against the faster of this tool's dense kernel and eager PyTorch's (same threads): below 1x, "
             "the layer is faster than this tool's dense code but not than the model as PyTorch runs it.",
             "", "| layer | kind | dense ms | dense ms, eager PyTorch | transformed ms | measured | "
             "against the fastest dense | theoretical | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    kept_for_budget = set(crossover.get("kept_for_budget", ()))
    for row in crossover["layers"]:
        verdict = "below crossover: left dense" if row["below_crossover"] else "kept"
        if row["layer"] in kept_for_budget:
            verdict = "below crossover: kept for the accuracy budget"
        eager = row.get("eager_ms")
        fastest = row.get("speedup_vs_fastest", row["speedup"])
        lines.append(f"| `{row['layer']}` | {row['kind']} | {row['dense_ms']:.3f} | "
                     f"{'n/a' if eager is None else f'{eager:.3f}'} | {row['transformed_ms']:.3f} | "
                     f"{row['speedup']:.2f}x | {fastest:.2f}x | {_ratio(row['theoretical'])} | {verdict} |")  # fmt: skip
    if not crossover["layers"]:
        lines.append("| (no transformed layer saves work) | | | | | | | | |")
    return lines


def _ratio(theoretical: float | None) -> str:
    return "all skipped" if theoretical is None else f"{theoretical:.2f}x"


def on_ranks(search: dict) -> str:
    """What a report says of a search's ranks (``search["ranks"]``): nothing for one process."""
    ranks = search.get("ranks", 1)
    return f" on {ranks} ranks (torchrun), the images shared between them" if ranks > 1 else ""
