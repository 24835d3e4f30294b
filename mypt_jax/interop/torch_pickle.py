"""Reads and writes PyTorch zip checkpoints (`torch.save` format) without importing torch.

Reading is safe against malicious files: the pickle may only name the handful of globals a
tensor checkpoint needs (tensor rebuild, OrderedDict, typed storages); any other global is
refused before anything is called, so a crafted `model.pt` cannot run code. Tensors come back
as numpy arrays (bf16 as `ml_dtypes.bfloat16`) or, with `lazy=True`, as `TensorRef`s that read
their bytes from the file only when asked, so a converter never holds the whole payload.

Writing emits the same container `torch.load(weights_only=True)` reads: a protocol-2 pickle
whose tensors are `torch._utils._rebuild_tensor_v2` over persistent storage ids, and one
uncompressed, 64-byte aligned `data/<key>` entry per storage, streamed one at a time.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import secrets
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_STORAGE_OF_DTYPE = {dt: name for name, dt in _STORAGE_DTYPES.items()}
_ALIGNMENT = 64  # torch aligns storage records so they can be memory-mapped


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: truncated, malformed or of an unknown format."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asked for a global outside the tensor-rebuild set; nothing was executed."""


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------

class _StorageType:
    """Stand-in for `torch.<X>Storage` in a persistent id; deliberately not callable."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """One `data/<key>` record: where its bytes start in the file and how many elements."""

    def __init__(self, path: Path, key: str, dtype: np.dtype, numel: int, offset: int,
                 nbytes: int, compressed: zipfile.ZipInfo | None, zf: zipfile.ZipFile):
        self.path, self.key, self.dtype, self.numel = path, key, dtype, numel
        self.offset, self.nbytes, self._compressed, self._zf = offset, nbytes, compressed, zf

    def read(self, start: int, count: int) -> np.ndarray:
        """Elements [start, start+count) as a fresh array."""
        out = np.empty(count, self.dtype)
        if self._compressed is not None:  # torch never compresses; handle it anyway
            with self._zf.open(self._compressed) as f:
                raw = f.read()
            return np.frombuffer(raw, self.dtype, count, start * self.dtype.itemsize).copy()
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.dtype.itemsize)
            got = f.readinto(memoryview(out.view(np.uint8)))
        if got != out.nbytes:
            raise CheckpointError(f"{self.path}: storage data/{self.key} is truncated")
        return out


class TensorRef:
    """A tensor in a checkpoint file, read on demand (`.numpy()` or `np.asarray(ref)`)."""

    def __init__(self, storage: _Storage, storage_offset: int, shape: tuple[int, ...],
                 stride: tuple[int, ...]):
        self.storage, self.storage_offset = storage, storage_offset
        self.shape, self.stride = shape, stride
        self.dtype = storage.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def same_storage(self, other: TensorRef) -> bool:
        return (self.storage is other.storage and self.storage_offset == other.storage_offset
                and self.shape == other.shape and self.stride == other.stride)

    def _contiguous(self) -> bool:
        expected, step = [], 1
        for n in reversed(self.shape):
            expected.append(step)
            step *= n
        return all(n == 1 or s == e for n, s, e in zip(self.shape, self.stride, reversed(expected),
                                                        strict=True))

    def numpy(self) -> np.ndarray:
        if self.size == 0:
            return np.zeros(self.shape, self.dtype)
        if self._contiguous():
            return self.storage.read(self.storage_offset, self.size).reshape(self.shape)
        extent = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        flat = self.storage.read(self.storage_offset, extent)
        strides = tuple(s * self.dtype.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(flat, self.shape, strides).copy()

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"TensorRef({self.dtype}, {self.shape}, data/{self.storage.key})"


def _data_offset(fp, info: zipfile.ZipInfo, path: Path) -> int:
    fp.seek(info.header_offset)
    header = fp.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: zip entry {info.filename} has a damaged local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path, storages: Callable[[str, _StorageType, int], _Storage],
                 lazy: bool):
        super().__init__(io.BytesIO(data))
        self._path, self._storages, self._lazy = path, storages, lazy

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self._path}: the pickle asks for the global {module}.{name}, which a tensor "
            "checkpoint never needs; refusing to load it (it could run code). Nothing was executed."
        )

    def persistent_load(self, pid: Any) -> _Storage:
        ok = (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
              and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
              and isinstance(pid[4], int))
        if not ok:
            raise CheckpointError(f"{self._path}: unexpected persistent id {pid!r} in data.pkl")
        return self._storages(pid[2], pid[1], pid[4])

    def _rebuild_tensor(self, storage, storage_offset, size, stride, requires_grad=False,
                        backward_hooks=None, metadata=None):
        ints = lambda t: isinstance(t, tuple) and all(isinstance(i, int) and i >= 0 for i in t)  # noqa: E731
        if not (isinstance(storage, _Storage) and isinstance(storage_offset, int)
                and ints(size) and ints(stride) and len(size) == len(stride)):
            raise CheckpointError(f"{self._path}: malformed tensor record in data.pkl")
        extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        if math.prod(size) and extent > storage.numel:
            raise CheckpointError(
                f"{self._path}: a tensor of shape {size} reaches past the end of storage "
                f"data/{storage.key} ({storage.numel} elements)"
            )
        ref = TensorRef(storage, storage_offset, tuple(size), tuple(stride))
        return ref if self._lazy else ref.numpy()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _legacy_format_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: this is torch's legacy (pre-1.6, non-zip) serialization, which is not "
        "supported; re-save it with a current torch (`torch.save(torch.load(f), f)`)"
    )


def load(path: str | os.PathLike, *, lazy: bool = False) -> Any:
    """Unpickles a torch zip checkpoint with tensors as numpy arrays (or TensorRefs if lazy).

    Raises UnsafeCheckpointError for any global outside the tensor-rebuild set and
    CheckpointError for truncated or malformed files; both name the file.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        raise _legacy_format_error(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path}: not a readable torch zip checkpoint (truncated or damaged: {e})"
        ) from None
    infos = {i.filename: i for i in zf.infolist()}
    pkls = [n for n in infos if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pkls) != 1:
        raise CheckpointError(f"{path}: expected one <archive>/data.pkl entry, found {pkls}")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = infos.get(prefix + "byteorder")
    if byteorder is not None and zf.read(byteorder).strip() not in (b"little", b""):
        raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    try:
        data_pkl = zf.read(pkls[0])
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read {pkls[0]}: {e}") from None

    cache: dict[str, _Storage] = {}

    def storage(key: str, kind: _StorageType, numel: int) -> _Storage:
        if key in cache:
            return cache[key]
        info = infos.get(f"{prefix}data/{key}")
        if info is None:
            raise CheckpointError(f"{path}: data.pkl refers to storage data/{key}, which is missing")
        nbytes = numel * kind.dtype.itemsize
        if info.file_size != nbytes:
            raise CheckpointError(
                f"{path}: storage data/{key} holds {info.file_size} bytes, expected {nbytes} "
                f"({numel} x {kind.name})"
            )
        compressed = None if info.compress_type == zipfile.ZIP_STORED else info
        with open(path, "rb") as fp:
            offset = _data_offset(fp, info, path)
        if compressed is None and offset + nbytes > file_size:
            raise CheckpointError(f"{path}: storage data/{key} is truncated")
        cache[key] = _Storage(path, key, kind.dtype, numel, offset, nbytes, compressed, zf)
        return cache[key]

    try:
        return _SafeUnpickler(data_pkl, path, storage, lazy).load()
    except CheckpointError:
        raise
    except Exception as e:  # any malformed pickle: report, never propagate odd types
        raise CheckpointError(f"{path}: data.pkl is not a valid checkpoint pickle ({e!r})") from None


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------

class _PickleWriter:
    """A minimal protocol-2 pickler for the types a checkpoint payload holds.

    Array-likes (anything with `shape` and `dtype`) become tensors; the same object twice
    is written once and referenced again (like torch's memo), which is how tied weights
    share one storage.
    """

    def __init__(self):
        self.out = io.BytesIO()
        self.storages: list[tuple[str, Any]] = []
        self._memo: dict[int, int] = {}
        self._keep: list[Any] = []  # keeps memoised objects alive so ids stay unique

    def _w(self, b: bytes) -> None:
        self.out.write(b)

    def _put(self, obj: Any) -> None:
        idx = len(self._memo)
        self._memo[id(obj)] = idx
        self._keep.append(obj)
        self._w(b"r" + struct.pack("<I", idx))

    def _global(self, module: str, name: str) -> None:
        self._w(b"c" + f"{module}\n{name}\n".encode())

    def _str(self, s: str) -> None:
        b = s.encode("utf-8")
        self._w(b"X" + struct.pack("<I", len(b)) + b)

    def _int(self, i: int) -> None:
        if -(2**31) <= i < 2**31:
            self._w(b"J" + struct.pack("<i", i))
        else:
            b = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
            self._w(b"\x8a" + bytes([len(b)]) + b)

    def _tuple(self, items) -> None:
        self._w(b"(")
        for x in items:
            self.save(x)
        self._w(b"t")

    def save(self, obj: Any) -> None:
        if id(obj) in self._memo:
            self._w(b"j" + struct.pack("<I", self._memo[id(obj)]))
            return
        if obj is None:
            self._w(b"N")
        elif obj is True or obj is False:
            self._w(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            self._w(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, tuple):
            self._tuple(obj)
        elif isinstance(obj, list):
            self._w(b"]")
            self._put(obj)
            if obj:
                self._w(b"(")
                for x in obj:
                    self.save(x)
                self._w(b"e")
        elif isinstance(obj, dict):
            if isinstance(obj, collections.OrderedDict):
                self._global("collections", "OrderedDict")
                self._w(b")R")
            else:
                self._w(b"}")
            self._put(obj)
            if obj:
                self._w(b"(")
                for k, v in obj.items():
                    self.save(k)
                    self.save(v)
                self._w(b"u")
        elif hasattr(obj, "shape") and hasattr(obj, "dtype"):
            self._tensor(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} into a torch checkpoint")

    def _tensor(self, arr: Any) -> None:
        dtype = np.dtype(arr.dtype)
        if dtype not in _STORAGE_OF_DTYPE:
            raise TypeError(f"no torch storage type for dtype {dtype}")
        shape = tuple(int(n) for n in arr.shape)
        stride, step = [], 1
        for n in reversed(shape):
            stride.append(step)
            step *= n
        key = str(len(self.storages))
        self.storages.append((key, arr))
        self._global("torch._utils", "_rebuild_tensor_v2")
        self._w(b"(")
        # persistent id ('storage', torch.<X>Storage, key, 'cpu', numel)
        self._w(b"(")
        self._str("storage")
        self._global("torch", _STORAGE_OF_DTYPE[dtype])
        self._str(key)
        self._str("cpu")
        self._int(math.prod(shape))
        self._w(b"tQ")
        self._int(0)
        self._tuple(shape)
        self._tuple(tuple(reversed(stride)))
        self._w(b"\x89")  # requires_grad False
        self._global("collections", "OrderedDict")
        self._w(b")R")  # backward_hooks
        self._w(b"tR")
        self._put(arr)

    def finish(self) -> bytes:
        return b"\x80\x02" + self.out.getvalue() + b"."


def _write_entry(zf: zipfile.ZipFile, name: str, data: bytes | np.ndarray, align: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    nbytes = data.nbytes if isinstance(data, np.ndarray) else len(data)
    info.file_size = nbytes
    zip64 = nbytes * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule; adds a 20-byte extra
    if align:
        # Pad the local header's extra field so the data starts on a 64-byte boundary.
        start = zf.fp.tell() + 30 + len(name.encode()) + 4 + (20 if zip64 else 0)
        pad = -start % _ALIGNMENT
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    with zf.open(info, "w", force_zip64=zip64) as f:
        if isinstance(data, np.ndarray):
            flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            chunk = 1 << 26
            for i in range(0, flat.size, chunk):
                f.write(memoryview(flat[i : i + chunk]))
        else:
            f.write(data)


def save(obj: Any, path: str | os.PathLike) -> None:
    """Writes `obj` (dicts/lists/tuples/str/int/float/bool/None and arrays) as a torch checkpoint.

    Arrays may be lazy: anything with `shape`, `dtype` and `__array__` is materialised only
    when its storage is written, one at a time. The file appears atomically (temp + rename).
    """
    path = Path(path)
    writer = _PickleWriter()
    writer.save(obj)
    data_pkl = writer.finish()
    archive = path.stem or "archive"
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_entry(zf, f"{archive}/data.pkl", data_pkl, align=True)
            _write_entry(zf, f"{archive}/.format_version", b"1", align=True)
            _write_entry(zf, f"{archive}/.storage_alignment", b"64", align=True)
            _write_entry(zf, f"{archive}/byteorder", b"little", align=True)
            for key, arr in writer.storages:
                data = np.asarray(arr)
                if np.dtype(data.dtype) != np.dtype(arr.dtype) or data.shape != tuple(arr.shape):
                    raise ValueError(f"storage {key}: array changed shape/dtype while writing")
                _write_entry(zf, f"{archive}/data/{key}", data, align=True)
                del data
            _write_entry(zf, f"{archive}/version", b"3\n", align=True)
            serial = "".join(str(secrets.randbelow(10)) for _ in range(40)).encode()
            _write_entry(zf, f"{archive}/.data/serialization_id", serial, align=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
