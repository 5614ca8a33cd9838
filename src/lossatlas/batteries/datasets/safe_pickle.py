"""A pickle reader that runs no foreign code: only what the official CIFAR python files hold.

The CIFAR-10 / CIFAR-100 "python version" archives are pickles of dicts whose values are
bytes, str, ints, lists of those, and numpy arrays. Besides the plain opcodes those need, a
numpy array is rebuilt through exactly these globals (the names differ by numpy and pickle
protocol: the official files were written by Python 2 with ``numpy.core``, a file re-saved by
numpy ≥ 2 names ``numpy._core``, protocol 5 uses ``_frombuffer``)::

    numpy.core.multiarray._reconstruct   numpy._core.multiarray._reconstruct
    numpy.core.numeric._frombuffer       numpy._core.numeric._frombuffer
    numpy.ndarray   numpy.dtype          _codecs.encode (bytes under protocol 2 from Python 3)

Every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused
before it is looked up, and so are object dtypes (whose state would be arbitrary objects) and
persistent ids. ``_codecs.encode`` is admitted only as ``encode(str, "latin1")``.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from lossatlas.core.errors import LossAtlasError

__all__ = ["ALLOWED", "load"]


class _Refused(pickle.UnpicklingError):
    """Something the official files never hold (the message says what)."""


def _dtype(*args: Any, **kwargs: Any) -> np.dtype:
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise _Refused("an object dtype (arbitrary Python objects)")
    return dt


class _NDArray:
    """Stands for ``numpy.ndarray`` in a pickle: only usable as ``_reconstruct``'s subtype."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDArray:
        raise _Refused(f"an array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    arr = np.frombuffer(buf, dtype=_dtype(dtype))
    return arr.reshape(shape, order=order if order in ("C", "F") else "C")


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


#: (module, name) -> the callable handed to the unpickler instead of the real global.
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDArray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"the global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def load(data: bytes, what: str, fix: str) -> Any:
    """Unpickle ``data`` (the bytes of the file named by ``what``) admitting only dicts, lists,
    bytes, str, numbers and plain numpy arrays; anything else raises :class:`LossAtlasError`
    with one sentence naming ``what`` and ending in ``fix``. Py2 strings come back as bytes."""
    try:
        return _Unpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise LossAtlasError(
            f"{what} asks for {exc}, which the official files never hold, so it was not read "
            f"(it may run code); {fix}"
        ) from None
    except Exception as exc:  # truncated, not a pickle, bad array shape: one sentence too
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LossAtlasError(f"{what} is not a readable pickle ({reason}); {fix}") from None
