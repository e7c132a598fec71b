"""The report of a perforation rate search: Markdown and JSON side by side, the greedy
operating points as a table and a plot, and a picture of each layer's kept positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ... import storage
from ...evaluate import METRICS
from ...progress import phases_line
from ...report.budget import accuracy_checks, checks_markdown
from ...report.render import crossover_markdown, on_ranks
from .rewrite import perforated_ops


def write_report(result, out_dir: str | Path, title: str = "sparsify report") -> dict:
    """Write report.md, report.json, masks/*.png and operating_points.png into ``out_dir``;
    return the JSON data."""
    out = Path(out_dir)
    data = report_data(result)
    storage.write_json(out / "report.json", data)
    with storage.atomic_dir(out / "masks") as masks:  # no picture of an earlier run's layers stays
        for name, op in perforated_ops(result.graph_module).items():
            kept_picture(op.kept.numpy()).save(masks / f"{name.replace('/', '_')}.png")
    plot_operating_points(data, out / "operating_points.png")
    storage.write_text(out / "report.md", report_markdown(data, title))
    return data


def report_data(result) -> dict:
    ops = perforated_ops(result.graph_module)
    dense_rows = {row.name: row for row in result.dense.layers}
    layers = []
    for row in result.sparse.layers:
        entry = {"name": row.name, "kind": row.kind, "output": list(row.output_shape[1:]),
                 "dense_macs": dense_rows[row.name].macs if row.name in dense_rows else row.macs,
                 "performed_macs": row.performed_macs}  # fmt: skip
        if row.name in ops:
            entry.update(kept=1 - ops[row.name].rate, mask_note=result.mask_notes.get(row.name, ""))
        layers.append(entry)
    search = result.search
    dense_macs, performed = result.dense.total_macs, result.sparse.total_performed_macs
    calib = result.scores["calib"]
    final = calib[result.plan.results["final"]].value
    return {
        "metric": result.metric,
        "metric_name": METRICS[result.metric],
        "plan": {k: getattr(result.plan, k) for k in ("technique", "config", "search", "data", "model", "versions")},
        "accuracy": {split: {kind: s.value for kind, s in pair.items()} for split, pair in result.scores.items()},
        **accuracy_checks(result),
        "macs": {"dense": dense_macs, "performed": performed, "saved_fraction": 1 - performed / dense_macs,
                 "speedup": dense_macs / performed},  # fmt: skip
        # The plan written to plan.json, after the crossover rule and fine-tuning: the plot's star.
        "verified": {"calib_accuracy": final, "calib_loss_points": 100 * (calib["dense"].value - final),
                     "macs": performed, "macs_speedup": dense_macs / performed},  # fmt: skip
        "phases": result.phases,  # seconds per phase of the job, in order
        "search": {
            "seconds": search.seconds,
            "ranks": search.ranks,
            "candidates": search.candidates,
            "steps": len(search.points) - 1,
            "stop_reason": search.stop_reason,
            "cost_unit": search.cost_unit,
            "speedup_by_cost": search.point.speedup,
            "dense_loss": search.dense_loss,
            "checkpoint_records_resumed": result.checkpoint_resumed,
        },
        "finetune": result.finetune,
        "layers": layers,
        "skipped": result.skipped,
        "crossover": result.crossover.to_dict() if result.crossover is not None else None,
        "operating_points": [
            {"step": p.step, "layer": p.layer, "layers": list(p.layers), "kept": p.kept, "macs": p.macs, "macs_speedup": dense_macs / p.macs,
             "cost": p.cost, "speedup": p.speedup, "loss": p.loss, "accuracy": p.accuracy}  # fmt: skip
            for p in search.points
        ],
    }


def report_markdown(data: dict, title: str) -> str:
    acc, macs, search, plan = data["accuracy"], data["macs"], data["search"], data["plan"]
    budget = plan["search"]
    targets = []
    if budget.get("speedup"):
        targets.append(f"target speedup {budget['speedup']:g}x")
    if budget.get("epsilon") is not None:
        targets.append(f"epsilon {budget['epsilon']} ({budget['epsilon_kind']})")
    kinds = [k for k in ("dense", "perforated", "finetuned") if k in acc["test"]]
    lines = [
        f"# {title}",
        "",
        f"Perforated convolutions, `{budget['mask']}` masks, `{plan['config']['interpolation']}` interpolation, "
        f"greedy rates by {'MACs' if budget['cost'] == 'macs' else 'measured time'}, {', '.join(targets) or 'no stop target'}. "
        f"Metric: {data['metric_name']}.",
        f"Model `{plan['model']['source']}`, data `{plan['data']['name']}` (fingerprint {plan['data']['fingerprint']}).",
        "",
        "| split | " + " | ".join(kinds) + " | change |",
        "|---|" + "---|" * (len(kinds) + 1),
    ]
    for split in ("calib", "test"):
        values = [acc[split][k] for k in kinds]
        cells = [f"{100 * v:.2f}%" for v in values]
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {100 * (values[-1] - values[0]):+.2f} pts |")
    lines += checks_markdown(data)
    speed = f"**{macs['speedup']:.2f}x** theoretical (MACs)"
    if search["cost_unit"] == "ms":
        speed += f", {search['speedup_by_cost']:.2f}x by the measured layer times"
    lines += [
        "",
        f"MACs per image: dense {macs['dense']:,}, perforated {macs['performed']:,} "
        f"({100 * macs['saved_fraction']:.1f}% saved): {speed}.",
        f"Search: {search['steps']} greedy steps, {search['candidates']} candidate networks, "
        f"{search['seconds']:.1f} s{on_ranks(search)}; stopped because {search['stop_reason']}.",
        f"Time by phase: {phases_line(data['phases'])}.",
    ]
    if data["finetune"]:
        fine = data["finetune"]
        lines.append(f"Fine-tuned {len(fine['epochs'])} epochs in {fine['seconds']:.1f} s (lr {fine['config']['lr']}).")
    lines += [
        "",
        "| layer | kind | output | kept | dense MACs | performed MACs | speedup | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["layers"]:
        kept = f"{100 * row['kept']:.1f}%" if "kept" in row else ""
        ratio = row["dense_macs"] / row["performed_macs"] if row["performed_macs"] else float("inf")
        lines.append(f"| `{row['name']}` | {row['kind']} | {'x'.join(map(str, row['output']))} | {kept} | "
                     f"{row['dense_macs']:,} | {row['performed_macs']:,} | {ratio:.2f}x | {row.get('mask_note', '')} |")  # fmt: skip
    measured = search["cost_unit"] == "ms"
    header = ["step", "layer raised", "its kept fraction", "speedup (MACs)"] + (["speedup (ms)"] if measured else [])
    lines += [
        "",
        "Operating points (each greedy step raises one layer's rate, or a few layers' together, by one notch):",
        "",
        "| " + " | ".join(header + ["loss", data["metric_name"]]) + " |",
        "|" + "---|" * (len(header) + 2),
    ]
    for p in data["operating_points"]:
        cells = [str(p["step"]), ", ".join(f"`{layer}`" for layer in p["layers"]) or "(dense)",
                 ", ".join(f"{p['kept'][layer]:.3f}" for layer in p["layers"]) or "1", f"{p['macs_speedup']:.2f}x"]  # fmt: skip
        if measured:
            cells.append(f"{p['speedup']:.2f}x")
        cells += [f"{p['loss']:.4f}", f"{100 * p['accuracy']:.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    if data["skipped"]:
        lines += ["", "Layers left dense:", ""] + [f"- `{name}`: {why}" for name, why in data["skipped"].items()]
    lines += crossover_markdown(data.get("crossover"))
    lines += ["", "Kept positions: `masks/*.png` (white: computed). Curve: `operating_points.png`.", ""]
    return "\n".join(lines)


def kept_picture(kept: np.ndarray, scale: int = 8) -> Image.Image:
    """White = computed, black = interpolated."""
    tile = np.kron(kept.astype(np.uint8) * 255, np.ones((scale, scale), dtype=np.uint8))
    return Image.fromarray(tile)


def plot_operating_points(data: dict, path: Path) -> None:
    """Save :func:`operating_points_figure` of the report's ``data`` to ``path``."""
    with storage.atomic_path(path) as tmp:
        operating_points_figure(data).savefig(tmp, dpi=100)


def operating_points_figure(data: dict):
    """The greedy steps (speedup against calib loss) and, starred, the verified plan (the one in
    plan.json, after the crossover rule and fine-tuning): report.json's ``verified`` figures."""
    from matplotlib.figure import Figure  # no pyplot: nothing global to select or close

    points, verified = data["operating_points"], data["verified"]
    dense_accuracy = points[0]["accuracy"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot([p["macs_speedup"] for p in points], [100 * (dense_accuracy - p["accuracy"]) for p in points], "o-",
            label="greedy steps (MACs)")  # fmt: skip
    if data["search"]["cost_unit"] == "ms":
        ax.plot([p["speedup"] for p in points], [100 * (dense_accuracy - p["accuracy"]) for p in points], "s--",
                label="greedy steps (measured)")  # fmt: skip
    ax.plot([verified["macs_speedup"]], [verified["calib_loss_points"]], "r*", markersize=14,
            label="verified plan (plan.json, MACs)")  # fmt: skip
    ax.set_xlabel("speedup")
    ax.set_ylabel(f"calib {data['metric_name']} loss (points)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
