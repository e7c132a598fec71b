"""The main job's search on 1, 2, ... ranks (torchrun, gloo): the same plan, and how the search
time scales with the ranks sharing the calibration images. Every run has the same cores in all:
one rank gets them all as threads, N ranks get cores / N threads each.

    python benchmarks/search_scale.py                                   # CQ trained on digits, spatial
    python benchmarks/search_scale.py --technique perforation --ranks 1 2
    python benchmarks/search_scale.py --model my.pt2 --data images/ --mode uniform_patch

Prints, per run: the search's seconds, its phases, the speedup over one rank and whether the plan
is the one rank's. Runs go one at a time (never side by side: they share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def train_default(folder: Path) -> Path:
    """CIFAR-quick trained 4 epochs on digits at 3x32x32 (seconds): a model whose masks matter."""
    path = folder / "cq.pt2"
    command = [sys.executable, "-m", "sparsify_cnn", "train", "zoo:cq", "--data", "digits", "--epochs", "4", "--out", str(path)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return path


def run(ranks: int, cores: int, job: list[str], out: Path) -> dict:
    threads = max(1, cores // ranks)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if ranks == 1:
        command = [sys.executable, "-m", "sparsify_cnn", *job, "--out", str(out)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                   "-m", "sparsify_cnn", *job, "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{ranks} rank(s) failed: {done.stderr.strip().splitlines()[-1:]}")
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    return {"ranks": ranks, "threads": threads, "phases": report["phases"], "masks": plan["masks"],
            "results": plan["results"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="default: CQ trained on digits here")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--technique", default="spatial", choices=("spatial", "perforation"))
    parser.add_argument("--mode", default="uniform_filter", help="spatial's --mode")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sparsify-scale-"))
    model = args.model or train_default(folder)
    job = [str(model), "--data", args.data, "--technique", args.technique, "--target", "none", "--no-crossover"]
    if args.technique == "spatial":
        job += ["--mode", args.mode]
    rows = [run(ranks, args.cores, job, folder / f"ranks{ranks}") for ranks in args.ranks]
    base = rows[0]
    search = {"spatial": ("first level", "patch level", "channel level", "combining layers"),
              "perforation": ("impact masks", "greedy steps")}[args.technique]  # fmt: skip
    print(f"{args.technique} on {model.name}, data {args.data}, {args.cores} cores in all")
    print(f"{'ranks':>5} {'threads':>7} {'search s':>9} {'speedup':>8} {'same plan':>9}  phases")
    base_seconds = sum(base["phases"].get(name, 0.0) for name in search)
    for row in rows:
        seconds = sum(row["phases"].get(name, 0.0) for name in search)
        same = row["masks"] == base["masks"] and row["results"] == base["results"]
        phases = ", ".join(f"{name} {value:.1f}" for name, value in row["phases"].items())
        print(f"{row['ranks']:>5} {row['threads']:>7} {seconds:>9.1f} {base_seconds / seconds:>7.2f}x {str(same):>9}  {phases}")


if __name__ == "__main__":
    main()
