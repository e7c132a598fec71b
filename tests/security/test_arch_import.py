"""``--arch`` names a module in the current directory, and that directory may also hold files
named like installed packages (numpy.py, tvm.py): those must never run in their place."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsify_cnn.errors import ModelLoadError
from sparsify_cnn.model_io import load_model

TRAPS = ("numpy", "tvm", "sympy")  # sympy: imported by inspect after the factory has run
TRAP = "open({marker!r}, 'w').write('ran')\nraise ImportError('the fake {name} ran')\n"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a factory module (importing a sibling), its state dict, and
    modules named like installed ones that leave a mark if they run."""
    (tmp_path / "parts.py").write_text("import torch\n\ndef conv():\n    return torch.nn.Conv2d(1, 2, 3)\n")
    (tmp_path / "mynet.py").write_text(
        "import torch\nimport parts\n\n"
        "def build():\n    return torch.nn.Sequential(parts.conv(), torch.nn.Flatten(), torch.nn.Linear(32, 3))\n\n"
        "def needs(width):\n    return build()\n\n"
        "def broken():\n    raise RuntimeError('no weights here')\n"
    )
    for name in TRAPS:
        (tmp_path / f"{name}.py").write_text(TRAP.format(marker=str(tmp_path / f"{name}.ran"), name=name))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(32, 3))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("how", ["-m", "script"])
def test_files_named_like_installed_packages_do_not_run(workdir, how):
    command = [sys.executable, "-m", "sparsify_cnn"] if how == "-m" else [str(Path(sys.executable).parent / "sparsify")]
    done = subprocess.run([*command, "inspect", "weights.pt", "--arch", "mynet:build", "--input-shape", "1,1,6,6"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "state_dict" in done.stdout
    assert not [name for name in TRAPS if (workdir / f"{name}.ran").exists()]


def test_factories_that_need_arguments_or_raise_are_one_line(workdir):
    with pytest.raises(ModelLoadError, match=r"'mynet:needs' could not be called without arguments: TypeError: .*"
                       r"give a factory that takes none"):  # fmt: skip
        load_model("weights.pt", arch="mynet:needs")
    with pytest.raises(ModelLoadError, match="'mynet:broken' failed when called: RuntimeError: no weights here"):
        load_model("weights.pt", arch="mynet:broken")
    with pytest.raises(ModelLoadError, match="mynet.py has no function 'nothing'"):
        load_model("weights.pt", arch="mynet:nothing")


def test_sys_exit_or_a_lazy_module_in_the_factory_is_one_line(workdir):
    """sys.exit(0) as the module imports or in the factory once ended the run with exit 0; a
    factory whose model has lazy (shapeless) parameters once crashed reading their shapes."""
    (workdir / "quits.py").write_text("raise SystemExit(0)\n")
    (workdir / "odd.py").write_text(
        "import sys, torch\n\ndef quits():\n    sys.exit(0)\n\n"
        "def lazy():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))\n"
    )
    with pytest.raises(ModelLoadError, match=r"cannot import --arch 'quits:f': it called sys.exit\(0\)"):
        load_model("weights.pt", arch="quits:f")
    with pytest.raises(ModelLoadError, match=r"--arch 'odd:quits' called sys.exit\(0\)"):
        load_model("weights.pt", arch="odd:quits")
    with pytest.raises(ModelLoadError, match=r"does not fit --arch odd:lazy: size mismatch"):
        load_model("weights.pt", arch="odd:lazy")
