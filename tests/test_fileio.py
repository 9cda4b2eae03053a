"""bhsearch.fileio: atomic files and folder sets, modes, rollback, writability checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bhsearch.errors import UsageError
from bhsearch.fileio import atomic_entries, atomic_write_text, check_writable


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_gives_the_usual_mode_and_no_leftovers(tmp_path, umask_022):
    path = atomic_write_text(tmp_path / "a" / "x.json", "{}\n")
    assert path.read_text() == "{}\n" and _mode(path) == 0o644
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_atomic_entries_replaces_the_set_and_keeps_other_files(tmp_path, umask_022):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text("old spec")
    (out / "weights.bin").write_text("old weights")
    (out / "other.txt").write_text("another target's file")
    with atomic_entries(out) as stage:
        assert stage.parent == out  # staged inside the destination, not in its parent
        (stage / "spec.json").write_text("new spec")
        (stage / "weights.bin").write_text("new weights")
        (stage / "sub").mkdir()
        (stage / "sub" / "f").write_text("f")
    assert (out / "spec.json").read_text() == "new spec" and (out / "weights.bin").read_text() == "new weights"
    assert (out / "other.txt").read_text() == "another target's file"
    assert sorted(p.name for p in out.iterdir()) == ["other.txt", "spec.json", "sub", "weights.bin"]
    assert _mode(out / "weights.bin") == 0o644 and _mode(out / "sub") == 0o755 and _mode(out / "sub" / "f") == 0o644


def test_atomic_entries_failure_mid_rename_restores_the_old_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("old a")
    (out / "b.bin").write_text("old b")
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(dst) == out / "b.bin" and Path(src).parent.name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space left"), atomic_entries(out) as stage:
        (stage / "a.json").write_text("new a")
        (stage / "b.bin").write_text("new b")
    assert ("a.json", "a.json") in calls  # a.json had been replaced before b.bin failed
    assert (out / "a.json").read_text() == "old a" and (out / "b.bin").read_text() == "old b"
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.bin"]


def test_atomic_entries_refuses_a_clash_without_replace(tmp_path):
    out = tmp_path / "out"
    (out / "set").mkdir(parents=True)
    with pytest.raises(FileExistsError), atomic_entries(out, replace=False) as stage:
        (stage / "set").mkdir()
    assert list((out / "set").iterdir()) == [] and [p.name for p in out.iterdir()] == ["set"]


def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the probe leaves nothing
    with pytest.raises(UsageError, match="exists and is not a directory"):
        check_writable(tmp_path / "file")
    with pytest.raises(UsageError, match="is not a directory"):
        check_writable(tmp_path / "file" / "sub")
    with pytest.raises(UsageError, match="is a directory, expected a file"):
        check_writable(tmp_path, "--csv", is_dir=False)


def test_run_folder_weights_and_checkpoints_are_0644(tmp_path, umask_022):
    torch = pytest.importorskip("torch")
    from bhsearch.detectors import save_weights
    from bhsearch.train import loop

    written = [
        loop.save_safetensors(tmp_path / "model.safetensors", {"w": torch.ones(2)}),
        loop.save_checkpoint(tmp_path / "last.pt", {"format": 1}),
        save_weights(torch.nn.Linear(2, 1), tmp_path / "weights.safetensors"),
    ]
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model.safetensors", "weights.safetensors"]
