"""The report of an SSC job: Markdown and JSON side by side. Per layer its (g, p) and the
parameters and MACs before and after; the model's parameter fraction against the target (or a
preset's nominal alpha); layers left dense and why; accuracy dense, SSC and fine-tuned."""

from __future__ import annotations

from pathlib import Path

from ... import storage
from ...evaluate import METRICS
from ...progress import phases_line
from ...report.budget import accuracy_checks, checks_markdown
from ...report.render import crossover_markdown
from .presets import get_preset


def write_report(result, out_dir: str | Path, title: str = "sparsify report") -> dict:
    """Write report.md and report.json into ``out_dir``; return the JSON data."""
    out = Path(out_dir)
    data = report_data(result)
    storage.write_json(out / "report.json", data)
    storage.write_text(out / "report.md", report_markdown(data, title))
    return data


def report_data(result) -> dict:
    assignment, config = result.assignment, result.config
    dense_rows = {row.name: row for row in result.dense.layers}
    layers = []
    for row in result.sparse.layers:
        before = dense_rows.get(row.name, row)
        ssc = row.kind == "ssc"
        g, p = assignment.choices[row.name] if ssc else (None, None)
        left_dense = result.crossover is not None and row.name in result.crossover.left_dense
        layers.append({
            "name": row.name, "kind": row.kind, "output": list(row.output_shape[1:]),
            "g": g, "p": p, "ssc": ssc,
            "params_before": before.params, "params_after": row.params,
            "macs_before": before.macs, "macs_after": row.performed_macs,
            "note": "below crossover: left dense" if left_dense
            else assignment.notes.get(row.name, "") or assignment.skipped.get(row.name, ""),
        })  # fmt: skip
    dense_params, params = result.dense.total_params, result.sparse.total_params
    dense_macs, macs = result.dense.total_macs, result.sparse.total_performed_macs
    nominal = get_preset(config.preset).alpha if config.preset is not None else None
    return {
        "metric": result.metric,
        "metric_name": METRICS[result.metric],
        "plan": {k: getattr(result.plan, k) for k in ("technique", "config", "search", "data", "model", "versions")},
        "accuracy": {split: {kind: s.value for kind, s in pair.items()} for split, pair in result.scores.items()},
        **accuracy_checks(result),
        "params": {"dense": dense_params, "ssc": params, "fraction": params / dense_params,
                   "assignment_fraction": assignment.fraction, "target": config.target_fraction,
                   "preset": config.preset, "preset_nominal": nominal, "meets_target": assignment.meets_target},
        "macs": {"dense": dense_macs, "performed": macs, "fraction": macs / dense_macs,
                 "saved_fraction": 1 - macs / dense_macs},
        "source": assignment.source,
        "notes": assignment.notes,
        "skipped": assignment.skipped,
        "seconds": result.seconds,
        "phases": result.phases,  # seconds per phase of the job, in order
        "finetune": result.finetune,
        "layers": layers,
        "crossover": result.crossover.to_dict() if result.crossover is not None else None,
    }


def report_markdown(data: dict, title: str) -> str:
    acc, params, macs, plan = data["accuracy"], data["params"], data["macs"], data["plan"]
    if params["target"] is not None:
        goal = f"target parameter fraction {params['target']:g} ({data['source']})"
    elif params["preset"] is not None:
        goal = f"preset `{params['preset']}` (nominal alpha {params['preset_nominal']:g})"
    else:
        goal = "per-layer (g, p) map"
    kinds = [k for k in ("dense", "ssc", "finetuned") if k in acc["test"]]
    lines = [
        f"# {title}",
        "",
        f"Structured sparse convolutions from a {goal}. Metric: {data['metric_name']}.",
        f"Model `{plan['model']['source']}`, data `{plan['data']['name']}` (fingerprint {plan['data']['fingerprint']}).",
        "",
        f"Parameters: dense {params['dense']:,}, SSC {params['ssc']:,}: **{100 * params['fraction']:.1f}%** kept"
        + (f" (target {100 * params['target']:.1f}%, {'met' if params['meets_target'] else 'not met'})"
           if params["target"] is not None else "")
        + (f" (preset nominal {100 * params['preset_nominal']:.1f}%)" if params["preset_nominal"] is not None else "")
        + ".",
        f"MACs per image: dense {macs['dense']:,}, SSC {macs['performed']:,} ({100 * macs['fraction']:.1f}%).",
        "",
        "| split | " + " | ".join(kinds) + " | change |",
        "|---|" + "---|" * (len(kinds) + 1),
    ]  # fmt: skip
    for split in ("calib", "test"):
        values = [acc[split][k] for k in kinds]
        cells = [f"{100 * v:.2f}%" for v in values]
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {100 * (values[-1] - values[0]):+.2f} pts |")
    lines += checks_markdown(data)
    if data["finetune"]:
        fine = data["finetune"]
        config = fine["config"]
        resumed = f", resumed from epoch {fine['resumed_from']}" if fine.get("resumed_from") else ""
        lines += ["", (f"Fine-tuned {config['epochs']} epochs in {fine['seconds']:.1f} s{resumed}: lr {config['lr']}, "
                  f"{config['schedule']} schedule, batch {config['batch_size']}, weight decay {config['weight_decay']}, "
                  f"momentum {config['momentum']}, seed {config['seed']}.")]  # fmt: skip
    else:
        lines += ["", "Not fine-tuned."]
    lines.append(f"Time by phase: {phases_line(data['phases'])}.")
    lines += [
        "",
        "| layer | kind | output | g | p | params before | params after | MACs before | MACs after | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["layers"]:
        g = "" if not row["ssc"] else ("-" if row["g"] is None else row["g"])
        p = "" if not row["ssc"] else ("-" if row["p"] is None else row["p"])
        lines.append(f"| `{row['name']}` | {row['kind']} | {'x'.join(map(str, row['output']))} | {g} | {p} | "
                     f"{row['params_before']:,} | {row['params_after']:,} | {row['macs_before']:,} | "
                     f"{row['macs_after']:,} | {row['note']} |")  # fmt: skip
    if data["skipped"]:
        lines += ["", "## Left dense", ""] + [f"- `{name}`: {why}" for name, why in data["skipped"].items()]
    if data["notes"]:
        lines += ["", "## Notes", ""] + [f"- `{name}`: {note}" for name, note in data["notes"].items()]
    lines += crossover_markdown(data.get("crossover"))
    return "\n".join(lines) + "\n"
