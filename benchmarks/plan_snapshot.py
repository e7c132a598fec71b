"""Plans for fixed inputs, to show a change to the package leaves behaviour alone: trains the demo
and benchmark models (seeded), runs the main job of every technique on them through the CLI
(no crossover, no compile: those time kernels), and writes each plan with its timings and
versions left out. Run it before and after a change and compare:

    python benchmarks/plan_snapshot.py /tmp/before --models /tmp/snapshot-models
    python benchmarks/plan_snapshot.py /tmp/after --models /tmp/snapshot-models
    python benchmarks/plan_snapshot.py --compare /tmp/before /tmp/after

The models are trained once into --models and reused, so both runs see the same weights; their
weights digests are written too (a change to training shows there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = {"lenet": 2, "cq": 2}  # zoo model -> epochs on digits
JOBS = {
    "lenet-spatial-uniform_filter": ("lenet", ["--mode", "uniform_filter"]),
    "lenet-spatial-uniform_layer": ("lenet", ["--mode", "uniform_layer"]),
    "lenet-spatial-uniform_patch": ("lenet", ["--mode", "uniform_patch", "--epsilon", "0.02"]),
    "lenet-spatial-max_granularity": ("lenet", ["--mode", "max_granularity", "--patch-size", "3"]),
    "cq-spatial-uniform_filter": ("cq", ["--mode", "uniform_filter", "--epsilon-kind", "relative"]),
    "cq-perforation-impact-speedup": ("cq", ["--technique", "perforation", "--speedup", "2"]),
    "cq-perforation-grid-epsilon": ("cq", ["--technique", "perforation", "--mask", "grid", "--epsilon", "0.02"]),
    "cq-perforation-finetune": ("cq", ["--technique", "perforation", "--speedup", "1.5", "--finetune-epochs", "1"]),
    "lenet-perforation-pooling": ("lenet", ["--technique", "perforation", "--mask", "pooling", "--speedup", "1.5"]),
    "cq-ssc-target": ("cq", ["--technique", "ssc", "--target-params", "0.3"]),
    "cq-ssc-layers-finetune": ("cq", ["--technique", "ssc", "--ssc-layer", "*=2,4", "--finetune-epochs", "1"]),
}
VOLATILE = {"versions", "seconds"}  # what differs between two runs of the same code


def sparsify(*args: str) -> None:
    command = [sys.executable, "-m", "sparsify_cnn", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def stable(value):
    """``value`` without the fields that vary between runs of the same code."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def snapshot(out: Path, models: Path) -> None:
    from sparsify_cnn.pipeline import prepare
    from sparsify_cnn.plan import weights_digest

    models.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, epochs in TRAIN.items():
        path = models / f"{name}.pt2"
        if not path.exists():
            sparsify("train", f"zoo:{name}", "--data", "digits", "--epochs", str(epochs), "--out", str(path))
        digests[name] = weights_digest(prepare(str(path)).captured.graph_module)
    (out / "models.json").write_text(json.dumps(digests, indent=1))
    for job, (model, options) in JOBS.items():
        with tempfile.TemporaryDirectory() as work:
            sparsify(str(models / f"{model}.pt2"), "--data", "digits", "--target", "none", "--no-crossover",
                     "--out", work, *options)  # fmt: skip
            plan = json.loads((Path(work) / "plan.json").read_text())
        (out / f"{job}.json").write_text(json.dumps(stable(plan), indent=1, sort_keys=True))
        print(f"{job}: {plan['technique']}, {len(plan['masks'])} mask(s)", flush=True)


def compare(before: Path, after: Path) -> int:
    names = sorted({p.name for p in before.glob("*.json")} | {p.name for p in after.glob("*.json")})
    differ = [n for n in names if not (before / n).exists() or not (after / n).exists()
              or (before / n).read_text() != (after / n).read_text()]  # fmt: skip
    for name in names:
        print(f"{'DIFFERS' if name in differ else 'same   '}  {name}")
    print(f"{len(names) - len(differ)} of {len(names)} identical")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, help="Folder for the plans.")
    parser.add_argument("--models", type=Path, default=Path("snapshot-models"), help="Trained models (made if missing).")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if args.out is None:
        parser.error("give OUT or --compare BEFORE AFTER")
    snapshot(args.out, args.models)


if __name__ == "__main__":
    main()
