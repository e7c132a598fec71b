"""Tuning measured on the deployment machines through TVM's RPC tracker: a tracker and a server
on localhost, as a user starts them on their machines."""

import json
import socket
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sparsify_cnn.cli.main import cli
from sparsify_cnn.codegen.remote import RemoteDevice
from sparsify_cnn.errors import InputError
from sparsify_cnn.model_io import save_program

pytestmark = pytest.mark.tvm
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (the dev extra)")
KEY = "sparsify-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _registered(device: RemoteDevice) -> bool:
    try:
        return device.check() > 0
    except InputError:
        return False


def _wait_for(ready, failure: str, seconds: float = 120) -> None:
    """Poll ``ready`` (each process imports TVM first: seconds on a busy machine)."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{failure} in {seconds:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """A tracker and one server registered under KEY; yields (port, the server's log)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("rpc") / "server.log"
    processes = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                                   "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        _wait_for(lambda: _listening(port), "the RPC tracker did not start")
        server = _free_port()
        with open(log, "w") as out:
            processes.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                                               "--key", KEY, "--host", "127.0.0.1", "--port", str(server),
                                               "--port-end", str(server + 1)],
                                              stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
        device = RemoteDevice("127.0.0.1", port, KEY)
        _wait_for(lambda: _registered(device), "the RPC server did not register with the tracker")
        yield port, log
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def test_compile_measures_its_trials_and_the_default_schedule_check_on_the_rpc_server(tmp_path, tracker):
    port, log = tracker
    torch.manual_seed(0)
    save_program(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()).eval(), (4, 8, 8), tmp_path / "m.pt2")
    before = log.read_text().count("load_module")
    result = CliRunner().invoke(cli, ["compile", str(tmp_path / "m.pt2"), "--tune-trials", "2", "--records",
                                      str(tmp_path / "records"), "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", KEY,
                                      "--out", str(tmp_path / "artifact")])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    assert manifest["tuning"]["measured_on"] == f"key '{KEY}' at the tracker 127.0.0.1:{port}"
    # Trials and the check of each tuned kernel against its default schedule ran on the server.
    assert log.read_text().count("load_module") >= before + 2
    checks = json.loads((tmp_path / "records" / "default_schedule_checks.json").read_text())
    assert checks and set(checks.values()) <= {"default", "record"}


def test_a_key_no_server_registered_is_refused_before_tuning(tracker):
    port, _ = tracker
    with pytest.raises(InputError, match=f"has no server with key 'other' \\(keys there: {KEY}\\)"):
        RemoteDevice("127.0.0.1", port, "other").check()


def test_an_unreachable_tracker_is_one_line(tmp_path):
    port = _free_port()  # nothing listens there
    with pytest.raises(InputError, match=f"cannot reach the RPC tracker 127.0.0.1:{port}"):
        RemoteDevice("127.0.0.1", port, KEY).check()


@pytest.mark.parametrize("tracker_value, key, message", [
    ("localhost", "k", "is not HOST:PORT"),
    ("localhost:0", "k", "is not HOST:PORT"),
    ("localhost:9190", None, "needs --rpc-key"),
])  # fmt: skip
def test_tracker_options_are_checked(tracker_value, key, message):
    with pytest.raises(InputError, match=message):
        RemoteDevice.parse(tracker_value, key)


def test_rpc_options_without_tuning_are_usage_errors(tmp_path):
    base = ["compile", "zoo:lenet", "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(cli, [*base, "--rpc-tracker", "h:1", "--rpc-key", "k"])
    assert result.exit_code == 2 and "give --tune-trials" in result.output
    result = CliRunner().invoke(cli, [*base, "--rpc-key", "k"])
    assert result.exit_code == 2 and "--rpc-key needs --rpc-tracker" in result.output
