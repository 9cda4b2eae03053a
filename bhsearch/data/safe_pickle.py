"""A restricted unpickler for dataset pickles (CIFAR-100, ImageNet32).

Only numpy array/dtype/scalar reconstruction and plain containers and scalars are admitted; any other
global a pickle asks for (``os.system``, ``builtins.eval``, ...) is refused with a ``DataError`` that
names the file and the global. Truncated or corrupt files are reported the same way.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

from bhsearch.errors import DataError

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_NUMPY_NAMES = {"_reconstruct", "scalar", "_frombuffer"}
_PLAIN_BUILTINS = {
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "bytearray",
    "bytes",
    "str",
    "int",
    "float",
    "complex",
    "bool",
    "slice",
}


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of ``bytes`` use it, restricted to latin-1."""
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(obj, "latin1", errors)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits numpy arrays and plain containers only."""

    def find_class(self, module: str, name: str) -> Any:
        import numpy as np

        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return super().find_class(module, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return super().find_class(module, name)
        if module in ("builtins", "__builtin__") and name in _PLAIN_BUILTINS:
            return super().find_class("builtins", name)
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module in ("_codecs", "codecs") and name == "encode":
            return _latin1_encode
        raise _Refused(f"{module}.{name}")


class _Refused(pickle.UnpicklingError):
    pass


def loads(data: bytes, *, source: str = "<bytes>", encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with the restricted unpickler; ``source`` names it in errors."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except _Refused as exc:
        raise DataError(
            f"{source}: refused to unpickle global {exc} (only numpy arrays and plain containers are allowed)"
        ) from None
    except (
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as exc:
        what = "truncated" if isinstance(exc, EOFError) or "truncated" in str(exc) else "corrupt"
        raise DataError(f"{source}: not a readable pickle ({what}: {type(exc).__name__}: {exc})") from None


def load_pickle(path: str | Path, *, encoding: str = "latin1") -> Any:
    """Read a pickle file safely; missing, truncated or malicious files raise ``DataError`` naming ``path``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a pickle file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: empty file (expected a pickle)")
    return loads(data, source=str(path), encoding=encoding)


def str_keys(obj: Any, source: str) -> dict[str, Any]:
    """A pickled dict with ``bytes`` or ``str`` keys, as a dict with ``str`` keys."""
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
