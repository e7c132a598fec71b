"""The torchvision classification zoo as users bring it: every architecture, random weights,
exported the ordinary way (``torch.export.export(model, (one_image,))``: a static batch of one),
run through ``sparsify MODEL.pt2 --data x.npz --out DIR`` for each technique.

A run passes when it ends in a compiled artifact that reproduces the rewritten ``model.pt2``
on the data, or stops with exit 2 and one ``error:`` line under 300 characters (no traceback).
Anything else (a traceback, another exit code, a mismatch, a time-out) is a failure. Each run
starts its search afresh (``--no-resume``): a checkpoint that an earlier run, perhaps of other
code, left in ``--keep`` is not taken up.

    python benchmarks/zoo.py                                  # every model, three techniques
    python benchmarks/zoo.py --families --techniques spatial  # the smallest model of each family
    python benchmarks/zoo.py --models resnet18,mobilenet_v2 --target none
    python benchmarks/zoo.py --load-only                      # each export loaded, against eager
    python benchmarks/zoo.py --json zoo.json --resume         # go on where a stopped run left off

Needs torchvision built for the installed torch. Prints one row per (model, technique) and a
summary; ``--json`` keeps every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TECHNIQUES = {  # technique -> the options a user would give for a first try
    "spatial": ["--technique", "spatial"],
    "perforation": ["--technique", "perforation"],
    "ssc": ["--technique", "ssc", "--target-params", "0.5"],
}
# Models that cannot take 64x64 images as built: their size, or the option that fits them.
SIZES = {"inception_v3": 80, "maxvit_t": 224, "vit_h_14": 56}  # ViT-H's patches are 14 pixels
OPTIONS = {name: {"image_size": SIZES.get(name, 64)} for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32",
                                                                   "vit_h_14")}  # fmt: skip
MAX_ERROR_LINE = 300


def classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def smallest_of_each_family(names: list[str]) -> list[str]:
    """One model per family (the name before its size suffix), the one with fewest parameters."""
    import torchvision

    families: dict[str, tuple[int, str]] = {}
    for name in names:
        family = _family(name)
        # Published parameter counts: no need to build the model.
        size = next(iter(torchvision.models.get_model_weights(name))).meta["num_params"]
        if family not in families or size < families[family][0]:
            families[family] = (size, name)
    return sorted(name for _, name in families.values())


def _family(name: str) -> str:
    for prefix in ("efficientnet_v2", "mobilenet_v3", "shufflenet_v2", "wide_resnet", "resnext", "regnet_x",
                   "regnet_y", "swin_v2"):  # fmt: skip
        if name.startswith(prefix):
            return prefix
    return name.rstrip("0123456789_").split("_")[0].rstrip("0123456789")


def export_static(name: str, folder: Path, seed: int = 0) -> tuple[Path, int]:
    """``name`` with random weights and 10 classes, saved as users export it; and its image size."""
    import torchvision

    size = SIZES.get(name, 64)
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, num_classes=10, **OPTIONS.get(name, {})).eval()
    path = folder / f"{name}.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, size, size),)), str(path))
    return path, size


def check_load(name: str, path: Path, size: int, seed: int = 0) -> dict:
    """The static export loaded as the tool loads it (its batch freed), against the eager model
    (the same seeded weights) on a batch of 3 images."""
    import torchvision

    from sparsify_cnn.errors import SparsifyError
    from sparsify_cnn.model_io import load_model

    start = time.perf_counter()
    try:
        loaded = load_model(str(path)).module
    except SparsifyError as error:
        return {"status": "refused", "detail": f"error: {error}"[:MAX_ERROR_LINE], "seconds": 0}
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, num_classes=10, **OPTIONS.get(name, {})).eval()
    x = torch.randn((3, 3, size, size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        diff = float((loaded(x) - model(x)).abs().max())
    seconds = round(time.perf_counter() - start, 1)
    if not diff <= 1e-4:
        return {"status": "FAIL", "detail": f"a batch of 3 differs from eager by {diff:.2e}", "seconds": seconds}
    return {"status": "ok", "detail": f"a batch of 3 equals eager within {diff:.1e}", "seconds": seconds}


def write_data(path: Path, size: int, images: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((images, 3, size, size)).astype(np.float32))
    return path


def run_one(model: Path, data: Path, technique: str, out: Path, target: str, timeout: float) -> dict:
    command = [sys.executable, "-m", "sparsify_cnn", str(model), "--data", str(data), "--out", str(out),
               "--target", target, "--no-resume", *TECHNIQUES[technique]]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "FAIL", "detail": f"timed out after {timeout:.0f} s", "seconds": timeout}
    row = {"seconds": round(time.perf_counter() - start, 1), "exit": done.returncode}
    row.update(judge(done.returncode, done.stdout, done.stderr))
    if row["status"] == "ok" and target != "none":
        row.update(check_artifact(out, data))
    return row


def judge(code: int, stdout: str, stderr: str) -> dict:
    """ok (exit 0), refused (exit 2, one short error line, no traceback) or FAIL."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback" in stderr:
        return {"status": "FAIL", "detail": "traceback: " + (lines[-1] if lines else "")[:MAX_ERROR_LINE]}
    if code == 0:
        return {"status": "ok", "detail": (stdout.strip().splitlines() or [""])[0][:200]}
    errors = [line for line in lines if line.startswith("error:")]
    if code == 2 and len(errors) == 1 and len(errors[0]) < MAX_ERROR_LINE:
        return {"status": "refused", "detail": errors[0]}
    return {"status": "FAIL", "detail": f"exit {code}: " + " | ".join(lines[-3:])[:MAX_ERROR_LINE]}


def check_artifact(out: Path, data: Path, images: int = 4) -> dict:
    """The artifact against the rewritten model.pt2 it was compiled from. An image where a zero
    prediction sits at its threshold (the torch model's own output jumps under a nudge of one
    rounding) is left out and counted, as the compile check does (``OutputComparison``)."""
    from sparsify_cnn import runtime
    from sparsify_cnn.codegen.compile import OutputComparison
    from sparsify_cnn.errors import SparsifyError
    from sparsify_cnn.model_io import load_model

    artifact = runtime.load(out / "artifact")
    comparison = OutputComparison(load_model(str(out / "model.pt2")).module)
    batch = artifact.input["shape"][0]
    x = np.load(data)["x"][: max(images, batch) // batch * batch]
    try:
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            comparison.add(torch.from_numpy(chunk), artifact(chunk), f"images {start}-{start + batch - 1}")
        _, worst, at_threshold = comparison.result()
    except SparsifyError as error:
        return {"status": "FAIL", "detail": str(error)[:200]}
    if worst > 1e-3:
        return {"status": "FAIL", "detail": f"artifact differs from model.pt2 by {worst:.2e} (relative)"}
    return {"artifact_diff": worst, **({"threshold_images": at_threshold} if at_threshold else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: every classification model)")
    parser.add_argument("--families", action="store_true", help="only the smallest model of each family")
    parser.add_argument("--techniques", default=",".join(TECHNIQUES))
    parser.add_argument("--images", type=int, default=48, help="random images in x.npz (label-free)")
    parser.add_argument("--target", default="llvm", help="'none' skips compiling")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep models and outputs here")
    parser.add_argument("--json", type=Path, help="write every row here (after each run)")
    parser.add_argument("--resume", action="store_true", help="keep --json's rows and skip the runs they hold")
    parser.add_argument("--load-only", action="store_true", help="only load each export and check it against eager")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    names = args.models.split(",") if args.models else classification_models()
    if args.families:
        names = smallest_of_each_family(names)
    root = args.keep or Path(tempfile.mkdtemp(prefix="sparsify-zoo-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = json.loads(args.json.read_text()) if args.resume and args.json and args.json.exists() else []
    done = {(row["model"], row["technique"]) for row in rows}
    print(f"{'model':<22} {'technique':<12} {'status':<8} {'s':>7}  detail", flush=True)
    for name in names:
        techniques = [t for t in args.techniques.split(",") if (name, "load" if args.load_only else t) not in done]
        if not techniques:
            continue
        try:
            model, size = export_static(name, root)
        except Exception as error:  # noqa: BLE001 - a model the installed torch cannot export
            rows.append({"model": name, "technique": "-", "status": "no export", "detail": str(error)[:200]})
            print(f"{name:<22} {'-':<12} {'no export':<8} {'':>7}  {rows[-1]['detail']}", flush=True)
            continue
        if args.load_only:
            rows.append({"model": name, "technique": "load", **check_load(name, model, size)})
            print(f"{name:<22} {'load':<12} {rows[-1]['status']:<8} {rows[-1]['seconds']:>7}  {rows[-1]['detail']}",
                  flush=True)  # fmt: skip
            if args.keep is None:
                model.unlink()
            continue
        data = write_data(root / f"x{size}.npz", size, args.images)
        for technique in techniques:
            row = {"model": name, "technique": technique,
                   **run_one(model, data, technique, root / name / technique, args.target, args.timeout)}  # fmt: skip
            rows.append(row)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
            print(f"{name:<22} {technique:<12} {row['status']:<8} {row.get('seconds', 0):>7}  {row['detail']}",
                  flush=True)  # fmt: skip
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "refused", "FAIL", "no export")}
    print(f"\n{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.exit(1 if counts["FAIL"] else 0)


if __name__ == "__main__":
    main()
