"""Atomic outputs: every file bhsearch writes appears whole or not at all.

One mechanism for every writer: the new content goes to a temporary name in the destination's own
directory (so the final ``os.replace`` never crosses a filesystem, which would fail with EXDEV on a
mount point), is flushed, given the usual ``0666 & ~umask`` mode (``mkstemp`` makes 0600), and is
renamed onto the destination. On any error the temporary is removed and the destination is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (``0666 & ~umask``)."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The caller writes the temporary (with any library: ``DataFrame.to_parquet``, ``savefig``,
    ``safetensors.save_file``…). Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` and rename ``tmp`` onto ``path`` (readers never see half a file)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path`` as one set.

    An existing ``path`` is replaced whole (renamed aside, the new folder renamed in, the old one
    removed), so readers see the old set or the new set, never a mix. With ``replace=False`` an
    existing ``path`` raises ``FileExistsError`` before anything is written.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(str(path))
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    old = None
    try:
        yield tmp
        _fix_modes(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / "set")
        os.replace(tmp, path)
    except BaseException:
        if old is not None and (old / "set").exists() and not path.exists():
            os.replace(old / "set", path)  # put the previous set back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _fix_modes(folder: Path) -> None:
    for item in folder.rglob("*"):
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 & ~_umask()) if item.is_dir() else default_file_mode())


@contextmanager
def atomic_entries(path: str | Path, replace: bool = True, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder; on success its top-level entries replace those names in ``path`` as one set.

    Other entries of ``path`` are kept (an export folder holds several targets' files). A new ``path``
    appears in one rename (staged beside it); into an existing folder the staging folder lives *inside*
    ``path``, so no rename ever crosses out of it (a mount point). Existing entries are moved aside first;
    if anything fails, the new entries are taken back out and the old ones restored. With
    ``replace=False`` a clashing name raises ``FileExistsError`` and nothing changes. Names in ``last``
    are moved in after all others (put the file readers check for completeness there).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a directory")
    if not path.exists():
        with atomic_dir(path, replace=False) as tmp:
            yield tmp
        return
    tmp = Path(tempfile.mkdtemp(prefix=".bhsearch-", suffix=".tmp", dir=path))
    aside = None
    moved_in: list[str] = []
    moved_aside: list[str] = []
    try:
        yield tmp
        _fix_modes(tmp)
        entries = sorted(
            tmp.iterdir(), key=lambda p: (p.name in last, last.index(p.name) if p.name in last else 0, p.name)
        )
        clashes = [e.name for e in entries if (path / e.name).exists() or (path / e.name).is_symlink()]
        if clashes and not replace:
            raise FileExistsError(f"{path / clashes[0]}: exists")
        if clashes:
            aside = Path(tempfile.mkdtemp(prefix=".bhsearch-", suffix=".old", dir=path))
        for entry in entries:
            dst = path / entry.name
            if entry.name in clashes:
                os.replace(dst, aside / entry.name)
                moved_aside.append(entry.name)
            os.replace(entry, dst)
            moved_in.append(entry.name)
    except BaseException:
        for name in reversed(moved_in):  # take the new set back out, put the old one back
            os.replace(path / name, tmp / name)
        for name in moved_aside:
            os.replace(aside / name, path / name)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def check_writable(path: str | Path, what: str = "output", is_dir: bool = True) -> Path:
    """Raise ``UsageError`` now (before any work) unless ``path`` can be created or written.

    ``path`` is an output folder (``is_dir``) or file that may not exist yet: its nearest existing
    ancestor must be a folder in which a probe folder can be made (a real probe, so a read-only
    mount is caught even for root).
    """
    from bhsearch.errors import UsageError

    path = Path(path)
    if path.exists() and is_dir and not path.is_dir():
        raise UsageError(f"{what} {path}: exists and is not a directory")
    if path.is_dir() and not is_dir:
        raise UsageError(f"{what} {path}: is a directory, expected a file")
    probe_in = path if (is_dir and path.is_dir()) else path.absolute().parent
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise UsageError(f"{what} {path}: cannot be created ({probe_in} is not a directory)")
    try:
        Path(tempfile.mkdtemp(prefix=".bhsearch-probe-", dir=probe_in)).rmdir()
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def require_file(path: str | Path, missing: str, error: type[Exception] | None = None) -> Path:
    """``path`` as a ``Path`` if it is a file; else ``error`` (default ``UsageError``): ``missing``
    (e.g. ``"{path}: no such weights file"``) or, for a folder, that a file was expected."""
    from bhsearch.errors import UsageError

    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise (error or UsageError)(f"{path}: is a directory, expected a file")
    raise (error or UsageError)(missing.format(path=path))


__all__ = [
    "atomic_dir",
    "atomic_entries",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "default_file_mode",
    "require_file",
]
