"""Sizes: parse what a user types (``4GiB``, ``512MiB``, ``60%``), print bytes for people, and
the bytes of a framework's dtypes and arrays.

>>> parse_limit("4GiB")
Limit(bytes=4294967296, fraction=None, share=None)
>>> parse_limit("60%").fraction
0.6
>>> format_bytes(parse_limit("share:4").bytes_of(80 * GiB))
'18.60 GiB'
>>> format_bytes(1536 * MiB)
'1.50 GiB'
>>> format_bytes(None)
'unknown'
>>> itemsize("bfloat16"), nbytes((1024, 256), "float16")
(2, 524288)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": TiB, "tib": TiB, "tb": 1000**4,
}
MAX_BYTES = 1024 * TiB
MIN_BARE_LIMIT = 64 * MiB  # a limit without a unit below this needs one
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")
_SHARE = re.compile(r"^\s*share\s*:\s*(\d+)\s*$", re.IGNORECASE)
# A fair share (``share:N``) leaves outside the N framework limits what no limit covers: per
# kernel its CUDA context (0.6-0.8 GiB measured on an H200, see DESIGN.md) and the allocator's
# slack, rounded up to SHARE_RESERVE, and for the driver SHARE_DRIVER of the device.
SHARE_RESERVE = GiB
SHARE_DRIVER = 0.02
MAX_SHARE = 64
MIN_SHARE_BYTES = 256 * MiB


@dataclass(frozen=True)
class Limit:
    """A memory limit: an absolute number of bytes, a fraction of each device's total, or a fair
    ``share`` of it among that many kernels (each gets 1/share of the device less
    :data:`SHARE_DRIVER`, minus :data:`SHARE_RESERVE` for what lies outside its limit)."""

    bytes: Optional[int] = None
    fraction: Optional[float] = None
    share: Optional[int] = None

    def bytes_of(self, total_bytes: Optional[int]) -> Optional[int]:
        """The limit in bytes on a device of ``total_bytes`` (None when that is unknown)."""
        if self.bytes is not None:
            return self.bytes
        if total_bytes is None:
            return None
        if self.share is not None:
            each = total_bytes * (1 - SHARE_DRIVER) / self.share - SHARE_RESERVE
            return max(MIN_SHARE_BYTES, int(each))
        return int(self.fraction * total_bytes)

    def fraction_of(self, total_bytes: Optional[int]) -> Optional[float]:
        """The limit as a fraction of ``total_bytes``, capped at 1 (None when unknown)."""
        if self.fraction is not None:
            return self.fraction
        if not total_bytes:
            return None
        return min(1.0, self.bytes_of(total_bytes) / total_bytes)

    def __str__(self) -> str:
        if self.share is not None:
            return f"share:{self.share}"
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return format_bytes(self.bytes)


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit (``4GiB``, ``512M``, ``1.5GB``, ``1024``).

    Binary units (KiB, MiB, GiB, TiB and the bare letters K, M, G, T) count in powers of 1024,
    decimal ones (KB, MB, GB, TB) in powers of 1000. Raises ``ValueError`` with a readable message.
    """
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 4GiB, 512MiB, 60% or share:4)")
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ValueError(f"a size must be at least 1 byte: {text!r}")
    if value > MAX_BYTES:  # 400 digits would overflow; no device holds a pebibyte
        raise ValueError(f"a size must be at most {format_bytes(MAX_BYTES)}: {text!r}")
    return int(value)


def parse_limit(text: str) -> Limit:
    """A :class:`Limit` from ``4GiB`` (bytes), ``60%`` (of each GPU's total memory) or
    ``share:N`` (a fair share among N kernels on each GPU, see :class:`Limit`).

    A bare number under 64 MiB (``4``: four bytes, surely meant otherwise) needs a unit, and a
    share under 0.1 % is refused: no framework starts in that little memory."""
    share = _SHARE.match(str(text))
    if share:
        count = int(share.group(1))
        if not 1 <= count <= MAX_SHARE:
            raise ValueError(f"share:N needs N from 1 to {MAX_SHARE} kernels per GPU: {text!r}")
        return Limit(share=count)
    match = _PERCENT.match(str(text))
    if match:
        percent = float(match.group(1))
        if not 0.1 <= percent <= 100:
            raise ValueError(f"a percentage limit must be at least 0.1 and at most 100: {text!r}")
        return Limit(fraction=percent / 100)
    limit = Limit(bytes=parse_size(text))
    if limit.bytes < MIN_BARE_LIMIT and not _SIZE.match(str(text)).group(2):
        raise ValueError(f"a limit of {text.strip()} bytes is surely not meant: give a unit "
                         "(e.g. 4GiB, 512MiB) or a share (60%)")
    return limit


def format_bytes(value: Optional[float], signed: bool = False) -> str:
    """``value`` bytes for people (``1.50 GiB``); None prints as ``unknown``, never as 0."""
    if value is None:
        return "unknown"
    sign = ""
    if signed:
        sign = "+" if value > 0 else ("-" if value < 0 else "±")
        value = abs(value)
    elif value < 0:
        sign, value = "-", -value
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if value >= size:
            return f"{sign}{value / size:.2f} {unit}"
    return f"{sign}{int(value)} B"


def itemsize(dtype: object) -> int:
    """Bytes per element of ``dtype``: a name (``"float16"``, ``"bfloat16"``) or a NumPy,
    TensorFlow, JAX, torch or Keras dtype (4 for one it cannot tell)."""
    import numpy as np

    try:
        return np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).itemsize
    except TypeError:
        pass
    # bfloat16 is a NumPy dtype only once ml_dtypes is imported; torch's print as torch.float16
    name = str(getattr(dtype, "name", dtype)).replace("torch.", "")
    if "bfloat16" in name:
        return 2
    try:
        return np.dtype(name).itemsize
    except TypeError:
        return 4


def nbytes(shape: Iterable, dtype: object) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (an unknown dimension counts as 0)."""
    count = 1
    for dim in shape:
        count *= int(dim or 0)
    return count * itemsize(dtype)


def total_nbytes(arrays: Iterable) -> int:
    """Bytes of ``arrays``: anything with a ``shape`` and a ``dtype`` (variables, tensors,
    ``jax.ShapeDtypeStruct``)."""
    return sum(nbytes(a.shape, a.dtype) for a in arrays)
