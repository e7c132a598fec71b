import os
import stat
import subprocess
import sys

import pytest

from sparsify_cnn import storage
from sparsify_cnn.errors import OutputError


def test_a_writer_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "plan.json"
    storage.write_json(path, {"a": 1})
    with pytest.raises(ValueError, match="boom"), storage.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise ValueError("boom")
    assert path.read_text() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_the_temporary_keeps_the_suffix_writers_pick_a_format_by(tmp_path):
    with storage.atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "masks"
    with storage.atomic_dir(folder) as tmp:
        (tmp / "old.png").write_text("old")
    with pytest.raises(RuntimeError), storage.atomic_dir(folder) as tmp:
        (tmp / "new.png").write_text("new")
        raise RuntimeError
    assert [p.name for p in folder.iterdir()] == ["old.png"]
    with storage.atomic_dir(folder) as tmp:
        (tmp / "new.png").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["new.png"]  # nothing of the earlier folder stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]


@pytest.mark.parametrize("write", [
    lambda p: storage.write_text(p, "x"),
    lambda p: storage.write_buffered(p, lambda f: f.write(b"x")),
    lambda p: storage.atomic_dir(p).__enter__(),
])  # fmt: skip
def test_an_unwritable_place_is_one_output_error(tmp_path, write):
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(OutputError, match=r"cannot write '.*file/x'"):
        write(tmp_path / "file" / "x")  # root ignores permissions, not a file standing in for a folder


def test_unwritable_output_folders_are_found_before_any_work(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(OutputError, match="cannot write in output folder"):
        storage.check_writable_dir(tmp_path / "file" / "out")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        storage.check_writable_dir(tmp_path / "file")
    with pytest.raises(OutputError, match="cannot write in output folder '/proc/self/sparsify-out'"):
        storage.check_writable_dir("/proc/self/sparsify-out")
    assert storage.check_writable_dir(tmp_path / "new" / "out") is True
    assert storage.check_writable_dir(tmp_path / "new" / "out") is False
    assert list((tmp_path / "new" / "out").iterdir()) == []  # the probe is gone


def test_special_files_are_written_in_place():
    storage.write_text("/dev/null", "x")
    with pytest.raises(OutputError, match="cannot write '/dev/full': No space left on device"):
        storage.write_bytes("/dev/full", b"x" * 100_000)
    with pytest.raises(OutputError, match="cannot write '/dev/full'"):
        storage.write_buffered("/dev/full", lambda f: f.write(b"x" * 100_000))
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_torch_writers_on_a_full_disk_give_one_error_not_an_abort():
    # torch's own file writer raises, then aborts the process while it is destroyed
    code = ("import torch\nfrom sparsify_cnn import storage\nfrom sparsify_cnn.errors import OutputError\n"
            "try:\n    storage.write_buffered('/dev/full', lambda f: torch.save({'w': torch.zeros(100000)}, f))\n"
            "except OutputError as error:\n    print(error)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cannot write '/dev/full': No space left on device" in done.stdout


def test_a_second_lock_on_an_output_is_refused_and_freed_after(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with storage.output_lock(out) as lock:
        assert lock == out / ".sparsify.lock" and lock.read_text().startswith(f"{os.getpid()} ")
        with pytest.raises(OutputError, match=rf"being written by another sparsify run \(pid {os.getpid()}, started "
                                              r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it to finish or "
                                              r"choose another --out"):  # fmt: skip
            with storage.output_lock(out):
                pass
    assert list(out.iterdir()) == []  # the lock file goes with the lock
    with storage.output_lock(out):
        pass


def test_a_file_or_artifact_is_locked_through_a_sibling(tmp_path):
    artifact = tmp_path / "artifact"
    with storage.output_lock(artifact, inside=False) as lock:
        assert lock == tmp_path / ".artifact.lock" and not artifact.exists()
        with pytest.raises(OutputError, match="another sparsify run"):
            with storage.output_lock(artifact, inside=False):
                pass


def test_a_claim_removes_the_folders_it_made_when_they_stay_empty(tmp_path):
    with pytest.raises(RuntimeError), storage.claim_output(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / ".sparsify.lock").exists()
        raise RuntimeError("a failed validation")
    assert list(tmp_path.iterdir()) == []
    with storage.claim_output(tmp_path / "c" / "model.pt2", inside=False) as path:
        storage.write_text(path, "model")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["model.pt2"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with storage.claim_output(existing):
        pass
    assert existing.is_dir()  # not made by the claim: kept, empty or not


def test_a_claim_on_a_device_checks_and_locks_nothing():
    with storage.claim_output("/dev/null", inside=False) as path:
        assert str(path) == "/dev/null"
    assert not os.path.exists("/dev/.null.lock")


def test_leftovers_of_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".plan.tmp-{dead}.json").write_text("half")
    (tmp_path / ".model.tmp-1.pt2").write_text("another file's, of a live process (init)")
    storage.write_text(tmp_path / "plan.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.tmp-1.pt2", "plan.json"]


def test_a_folder_set_aside_by_a_killed_writer_is_put_back(tmp_path):
    dead = _dead_pid()
    previous = tmp_path / f".artifact.old-{dead}"
    previous.mkdir()
    (previous / "manifest.json").write_text("{}")
    (tmp_path / f".artifact.tmp-{dead}").mkdir()
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(tmp_path / "artifact"):
            assert (tmp_path / "artifact" / "manifest.json").exists()  # restored before anything else
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
