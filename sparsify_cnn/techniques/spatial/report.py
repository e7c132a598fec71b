"""The report of a zero-prediction search: Markdown and JSON side by side, pictures of the
chosen masks, and a plot of the operating points the search evaluated."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from ... import storage
from ...evaluate import METRICS
from ...option_types import format_bytes
from ...progress import phases_line
from ...report.budget import accuracy_checks, checks_markdown
from ...report.render import crossover_markdown, on_ranks
from .op import SpatialConv
from .rewrite import spatial_ops


def write_report(result, out_dir: str | Path, title: str = "sparsify report") -> dict:
    """Write report.md, report.json, masks/*.png and operating_points.png into ``out_dir``;
    return the JSON data."""
    out = Path(out_dir)
    data = report_data(result)
    storage.write_json(out / "report.json", data)
    with storage.atomic_dir(out / "masks") as masks:  # no picture of an earlier run's layers stays
        for name, op in spatial_ops(result.graph_module).items():
            mask_picture(op).save(masks / f"{_file_name(name)}.png")
    plot_operating_points(data, out / "operating_points.png")
    storage.write_text(out / "report.md", report_markdown(data, title))
    return data


def report_data(result) -> dict:
    ops = spatial_ops(result.graph_module)
    dense_rows = {row.name: row for row in result.dense.layers}
    layers = []
    for row in result.sparse.layers:
        entry = {"name": row.name, "kind": row.kind, "output": list(row.output_shape[1:]),
                 "dense_macs": dense_rows[row.name].macs if row.name in dense_rows else row.macs,
                 "performed_macs": row.performed_macs, "saved_fraction": row.saved_fraction}  # fmt: skip
        if row.kind == "spatial":
            stats = ops[row.name].stats
            entry.update(
                mask_ones=float(ops[row.name].mask.float().mean()),
                mispredicted=stats.mispredicted / max(stats.positions, 1),
                computed_zeros=stats.computed_zeros / max(stats.positions, 1),
            )
        layers.append(entry)
    search = result.search
    return {
        "metric": result.metric,
        "metric_name": METRICS[result.metric],
        "plan": {k: getattr(result.plan, k) for k in ("technique", "config", "search", "data", "model", "versions")},
        "accuracy": {split: {kind: s.value for kind, s in pair.items()} for split, pair in result.scores.items()},
        **accuracy_checks(result),
        "macs": {
            "dense": result.dense.total_macs,
            "performed_test": result.sparse.total_performed_macs,
            "saved_fraction_test": 1 - result.sparse.total_performed_macs / result.dense.total_macs,
            "saved_calib": result.calib_macs_saved,
        },
        # The plan written to plan.json, scored after the crossover rule: what the plot's star marks.
        "verified": {
            "calib_accuracy": result.scores["calib"]["sparse"].value,
            "calib_macs_saved": result.calib_macs_saved,
            "calib_saved_fraction": result.calib_macs_saved / result.dense.total_macs,
        },
        "phases": result.phases,  # seconds per phase of the job, in order
        "search": {
            "chosen": {"calib_accuracy": search.accuracy, "calib_macs_saved": search.macs_saved},
            "seconds": search.seconds,
            "ranks": search.ranks,
            "search_images": search.search_images,  # the per-layer levels' images (a sample, or every calib image)
            "options": search.options,
            "evaluated": search.candidates,
            "suffix_images": search.suffix_images,
            "full_passes": search.full_passes,
            "dense_cache": search.cache,
            "work_passes": search.work,
            "work_ratio_vs_naive": search.work_ratio,
            "checkpoint_records_resumed": result.checkpoint_resumed,
        },
        "layers": layers,
        "skipped": result.skipped,
        "crossover": result.crossover.to_dict() if result.crossover is not None else None,
        "operating_points": [
            {"step": p.step, "accuracy": p.accuracy, "macs_saved": p.macs_saved} for p in search.points
        ],
    }


def report_markdown(data: dict, title: str) -> str:
    acc, macs, search = data["accuracy"], data["macs"], data["search"]
    plan = data["plan"]
    lines = [
        f"# {title}",
        "",
        f"Zero prediction (Spatial ops), mode `{plan['search']['mode']}`, patch {plan['config']['patch_size']}x"
        f"{plan['config']['patch_size']}, epsilon {plan['search']['epsilon']} ({plan['search']['epsilon_kind']}). "
        f"Metric: {data['metric_name']}.",
        f"Model `{plan['model']['source']}`, data `{plan['data']['name']}` (fingerprint {plan['data']['fingerprint']}).",
        "",
        "| split | dense | sparsified | change |",
        "|---|---|---|---|",
    ]
    for split in ("calib", "test"):
        dense, sparse = acc[split]["dense"], acc[split]["sparse"]
        lines.append(f"| {split} | {100 * dense:.2f}% | {100 * sparse:.2f}% | {100 * (sparse - dense):+.2f} pts |")
    lines += checks_markdown(data)
    lines += [
        "",
        f"MACs per image: dense {macs['dense']:,}, performed on the test split {macs['performed_test']:,} "
        f"(**{100 * macs['saved_fraction_test']:.1f}% saved**; {macs['saved_calib']:,.0f} saved on calib).",
        "",
        "| layer | kind | output | dense MACs | performed MACs | saved | mask ones | mispredicted | computed zeros |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["layers"]:
        cells = [f"`{row['name']}`", row["kind"], "x".join(map(str, row["output"])), f"{row['dense_macs']:,}",
                 f"{row['performed_macs']:,}", f"{100 * row['saved_fraction']:.1f}%"]  # fmt: skip
        if "mask_ones" in row:
            cells += [f"{100 * row['mask_ones']:.0f}%", f"{100 * row['mispredicted']:.2f}%", f"{100 * row['computed_zeros']:.1f}%"]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "*mispredicted*: activations predicted zero that were not (they cost accuracy); *computed zeros*: "
        "zeros computed anyway (they cost only MACs); both as a share of the layer's activations on the test split.",
        "",
        f"Search: {search['seconds']:.1f} s{on_ranks(search)}, {search['evaluated']:,} of the seed's {search['options']:,} options "
        f"evaluated, {search['suffix_images']:,} suffix image passes and {search['full_passes']} full passes: "
        f"{search['work_passes']:.1f} network passes of work, {search['work_ratio_vs_naive']:.3f} of the seed's "
        f"Omega x F.{cache_sentence(search.get('dense_cache'))}{sample_sentence(search, data)}",
        f"Time by phase: {phases_line(data['phases'])}.",
    ]
    if data["skipped"]:
        lines += ["", "Layers left dense:", ""] + [f"- `{name}`: {why}" for name, why in data["skipped"].items()]
    lines += crossover_markdown(data.get("crossover"))
    lines += ["", "Masks: `masks/*.png` (white: computed first). Operating points: `operating_points.png`.", ""]
    return "\n".join(lines)


def cache_sentence(cache: dict | None) -> str:
    """What the report says of the dense cache when --max-cache-memory split it into groups."""
    if not cache or cache["groups"] <= 1:
        return ""
    return (f" The dense cache took at most {format_bytes(cache['peak_bytes'])} a rank: layers in "
            f"{cache['groups']} groups, {cache['recording_passes']} recording passes (--max-cache-memory).")  # fmt: skip


def mask_picture(op: SpatialConv, scale: int = 6, columns: int = 8) -> Image.Image:
    """White = computed first (1), black = predicted when the white ones are zero. One tile per
    channel, or one tile when every channel shares the mask."""
    mask = op.mask
    channels = mask[:1] if bool((mask == mask[:1]).all()) else mask[:64]
    c, h, w = channels.shape
    cols = min(columns, c)
    rows = math.ceil(c / cols)
    canvas = np.full((rows * (h + 1) * scale, cols * (w + 1) * scale), 128, dtype=np.uint8)
    for i, channel in enumerate(channels):
        tile = np.kron(channel.numpy().astype(np.uint8) * 255, np.ones((scale, scale), dtype=np.uint8))
        top, left = (i // cols) * (h + 1) * scale, (i % cols) * (w + 1) * scale
        canvas[top : top + h * scale, left : left + w * scale] = tile
    return Image.fromarray(canvas)


def plot_operating_points(data: dict, path: Path) -> None:
    """Save :func:`operating_points_figure` of the report's ``data`` to ``path``."""
    with storage.atomic_path(path) as tmp:
        operating_points_figure(data).savefig(tmp, dpi=100)


def operating_points_figure(data: dict):
    """Every network state the search evaluated, the dense model and, starred, the verified plan
    (the one in plan.json, scored after the crossover rule), from the report's ``data``: calib
    MACs saved against calib accuracy. The star is report.json's ``verified`` figures."""
    from matplotlib.figure import Figure  # no pyplot: nothing global to select or close

    dense_macs, dense_accuracy = data["macs"]["dense"], data["accuracy"]["calib"]["dense"]
    verified, budget = data["verified"], data["plan"]["search"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    points = data["operating_points"]
    saved, accuracy = [100 * p["macs_saved"] / dense_macs for p in points], [100 * p["accuracy"] for p in points]
    ax.plot(saved, accuracy, "o", alpha=0.6, label="evaluated network states")
    ax.plot([0], [100 * dense_accuracy], "ks", label="dense")
    ax.plot([100 * verified["calib_saved_fraction"]], [100 * verified["calib_accuracy"]], "r*", markersize=14,
            label="verified plan (plan.json)")  # fmt: skip
    floor = dense_accuracy - budget["epsilon"] * (dense_accuracy if budget["epsilon_kind"] == "relative" else 1)
    ax.axhline(100 * floor, color="gray", linestyle="--", label="accuracy budget")
    ax.set_xlabel("MACs saved on calib (%)")
    ax.set_ylabel(f"calib {data['metric_name']} (%)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _file_name(layer: str) -> str:
    return layer.replace("/", "_")


def sample_sentence(search: dict, data: dict) -> str:
    """Says when layer options were scored on a sample of the calibration images, and under a
    risk budget."""
    calib, sampled = data["budget"]["splits"]["calib"]["images"], search["search_images"]
    max_risk = data["plan"]["search"].get("max_risk")
    sentence = "" if max_risk is None else (f" Layer options were kept only where they use up at most {max_risk:g} "
                                            "of the images' margins, to first order (--max-risk).")  # fmt: skip
    if not sampled or sampled >= calib:
        return sentence
    return (f" Layer options were scored on a seeded sample of {sampled:,} of the {calib:,} calibration images; "
            f"layers were combined and the plan checked on all of them.{sentence}")
