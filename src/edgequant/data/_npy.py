"""Read .npy/.npz arrays safely and one row at a time.

Headers are parsed without touching the data, so a source can be validated cheaply before
anything runs. Rows are streamed: a .npy file is memory-mapped, and an .npz member (a zip
entry, possibly compressed, so it cannot be mapped) is read sequentially, one row's bytes at a
time. Pickle is never allowed: object dtypes are refused at the header.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from ..errors import EdgequantError

_MAGIC = b"\x93NUMPY"
# Fortran-ordered npz members cannot be read row by row; below this size they are read whole.
FORTRAN_LOAD_LIMIT = 64 << 20
# Errors a corrupt or truncated zip member raises while it is being decompressed.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


@dataclass(frozen=True)
class ArrayHeader:
    """What a .npy header says: enough to validate an array without reading it."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # bytes from the start of the .npy stream to the first data byte

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize


def read_header(fp: IO[bytes], where: str) -> ArrayHeader:
    """Parse a .npy header from ``fp`` (positioned at its start); ``where`` prefixes errors."""
    head = fp.read(8)
    if not head:
        raise EdgequantError(f"{where}: empty, not a .npy array")
    if head[:1] == b"\x80":
        raise EdgequantError(f"{where}: contains Python objects (pickle); refusing to load")
    if head[:6] != _MAGIC:
        raise EdgequantError(f"{where}: not a .npy array (bad magic bytes)")
    if len(head) < 8:
        raise EdgequantError(f"{where}: truncated .npy header")
    version = (head[6], head[7])
    try:
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fp)
        else:  # 3.0 only exists for structured dtypes with non-latin-1 field names
            raise EdgequantError(f"{where}: unsupported .npy format version {version[0]}.{version[1]}")
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise EdgequantError(f"{where}: corrupt .npy header ({exc})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise EdgequantError(f"{where}: contains Python objects (pickle); refusing to load")
    if dtype.names is not None or dtype.subdtype is not None:
        raise EdgequantError(f"{where}: structured dtype {dtype} is not supported; save plain arrays")
    return ArrayHeader(tuple(int(d) for d in shape), dtype, bool(fortran), fp.tell())


def npy_header(path: Path) -> ArrayHeader:
    """Header of a .npy file, checked against the file size (catches truncated files)."""
    try:
        with open(path, "rb") as fp:
            header = read_header(fp, str(path))
    except OSError as exc:
        raise EdgequantError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.stat().st_size < header.offset + header.nbytes:
        raise EdgequantError(f"{path}: truncated: header says shape {list(header.shape)} "
                             f"{header.dtype} but the file is too short")
    return header


def npz_headers(path: Path) -> dict[str, tuple[str, ArrayHeader]]:
    """Array name -> (zip member, header) for every array of an .npz, reading headers only."""
    try:
        with zipfile.ZipFile(path) as zf:
            out: dict[str, tuple[str, ArrayHeader]] = {}
            for info in zf.infolist():
                if info.is_dir():
                    continue
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as fp:
                    header = read_header(fp, f"{path}: array '{key}'")
                if info.file_size < header.offset + header.nbytes:
                    raise EdgequantError(f"{path}: array '{key}' is truncated")
                out[key] = (info.filename, header)
            return out
    except zipfile.BadZipFile:
        raise EdgequantError(f"{path}: not a valid .npz file (not a zip archive)") from None
    except EdgequantError:
        raise
    except (*ZIP_ERRORS, RuntimeError) as exc:  # RuntimeError: encrypted members
        raise EdgequantError(f"{path}: corrupt .npz file ({exc})") from None


def npy_rows(path: Path, header: ArrayHeader) -> np.ndarray:
    """The whole .npy as a read-only memory map: indexing a row reads only that row."""
    if header.nbytes == 0:
        return np.empty(header.shape, header.dtype)
    return np.memmap(path, dtype=header.dtype, mode="r", offset=header.offset, shape=header.shape,
                     order="F" if header.fortran else "C")


@contextmanager
def member_rows(zf: zipfile.ZipFile, member: str, header: ArrayHeader, where: str) -> Iterator[Iterator[np.ndarray]]:
    """Yield an iterator over the rows (first-axis entries) of one .npz member, read sequentially.

    The member is re-opened for each pass because a zip stream can only be read forwards.
    """
    with zf.open(member) as fp:
        fp.read(header.offset)  # skip the header, already parsed
        if header.fortran and len(header.shape) > 1:
            if header.nbytes > FORTRAN_LOAD_LIMIT:
                raise EdgequantError(
                    f"{where} is stored in Fortran order and is too large to read whole; "
                    "save it with np.ascontiguousarray(...) so it can be streamed")
            whole = np.frombuffer(_read_exact(fp, header.nbytes, where), header.dtype)
            yield iter(whole.reshape(header.shape, order="F"))
            return
        yield _stream_rows(fp, header, where)


def _stream_rows(fp: IO[bytes], header: ArrayHeader, where: str) -> Iterator[np.ndarray]:
    row_shape = header.shape[1:]
    row_bytes = prod(row_shape) * header.dtype.itemsize
    for _ in range(header.shape[0]):
        yield np.frombuffer(_read_exact(fp, row_bytes, where), header.dtype).reshape(row_shape)


def _read_exact(fp: IO[bytes], n: int, where: str) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = fp.read(n - got)
        if not chunk:
            raise EdgequantError(f"{where}: truncated (data ends early)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_member(zf: zipfile.ZipFile, member: str, header: ArrayHeader, where: str) -> np.ndarray:
    """Read one whole (small: one sample) .npz member."""
    with zf.open(member) as fp:
        fp.read(header.offset)
        data = np.frombuffer(_read_exact(fp, header.nbytes, where), header.dtype)
    return data.reshape(header.shape, order="F" if header.fortran else "C")
