"""A user's run prints our output and real warnings only: none of the noise that torch and TVM
print about their own internals (see sparsify_cnn/quiet.py)."""

import subprocess
import sys

import numpy as np

from sparsify_cnn import models
from sparsify_cnn.plan import Plan
from sparsify_cnn.techniques.spatial.op import diagonal, tile
from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, insert_spatial_ops, spatial_ops
from sparsify_cnn.transform.capture import capture

# What torch's FutureWarnings / UserWarnings and TVM's C++ log lines look like on stderr.
NOISE = ("Warning", "warnings.warn", "Scope Saving", "Scope Loaded", "LeafSpec")


def sparsify(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "sparsify_cnn.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def _spatial_plan(path):
    """A plan with Spatial ops on every conv of LeNet: their kernels are what make TVM log memory
    scopes when the artifact is saved and loaded."""
    gm = capture(models.build("lenet").eval(), (1, 1, 28, 28)).graph_module
    ops = spatial_ops(insert_spatial_ops(gm).graph_module)
    masks = {name: tile(diagonal(2), op.mask.shape[0], *op.out_hw, 2) for name, op in ops.items()}
    Plan("spatial", SpatialConfig().to_dict(), masks).save(path)


def test_compile_and_run_print_no_library_noise(tmp_path):
    _spatial_plan(tmp_path / "plan.json")
    compiled = sparsify("compile", "zoo:lenet", "--plan", "plan.json", "--out", "artifact", cwd=tmp_path)
    assert "wrote model.so, params.npz, manifest.json to artifact" in compiled.stdout
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    ran = sparsify("run", "artifact", "--input", "x.npy", "--output", "y.npy", cwd=tmp_path)
    assert np.load(tmp_path / "y.npy").shape == (1, 10)
    for step in (compiled, ran):
        assert not [line for line in step.stderr.splitlines() if any(word in line for word in NOISE)], step.stderr
