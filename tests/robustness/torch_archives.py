"""Hand-built torch.save zip archives, hostile or not, written without PyTorch.

The pickle is assembled opcode by opcode (protocol 2), exactly the shape torch.save writes
for a state dict: an OrderedDict of `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, hooks)` calls whose storages are persistent ids
`('storage', torch.<Type>Storage, key, 'cpu', numel)` naming `archive/data/<key>`.
Nothing here validates anything: the point is to write what an attacker could.
"""
from __future__ import annotations

import dataclasses
import struct
import zipfile
from typing import Any, Sequence

STORAGE_NAMES = {
    "float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
    "float64": "DoubleStorage", "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4,
            "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if not isinstance(value, int):
        return _str(str(value))  # a wrong type, on purpose
    if value == 0:
        return b"\x8a\x00"
    length = (value.bit_length() + 8) // 8
    return b"\x8a" + bytes([length]) + value.to_bytes(length, "little", signed=True)


def _tuple(items: Sequence[Any]) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t"


@dataclasses.dataclass
class Tensor:
    name: str
    storage_key: str
    offset: Any
    size: Any
    stride: Any


def state_dict_pickle(tensors: Sequence[Tensor], storages: dict[str, tuple[str, int]]) -> bytes:
    """Pickle bytes of an OrderedDict of tensors; `storages`: key -> (dtype, declared numel)."""
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R", b"("]
    for t in tensors:
        dtype, numel = storages[t.storage_key]
        out.append(_str(t.name))
        out.append(_global("torch._utils", "_rebuild_tensor_v2"))
        out.append(b"(")
        out.append(b"(" + _str("storage") + _global("torch", STORAGE_NAMES[dtype]) + _str(t.storage_key)
                   + _str("cpu") + _int(numel) + b"tQ")
        out.append(_int(t.offset))
        out.append(_tuple(t.size) if isinstance(t.size, (list, tuple)) else _int(t.size))
        out.append(_tuple(t.stride) if isinstance(t.stride, (list, tuple)) else _int(t.stride))
        out.append(b"\x89" + _global("collections", "OrderedDict") + b")R")
        out.append(b"tR")
    out.append(b"u.")
    return b"".join(out)


def write_archive(path, tensors: Sequence[Tensor], storage_bytes: dict[str, tuple[str, bytes]],
                  declared_numel: dict[str, int] | None = None, pickle_bytes: bytes | None = None) -> None:
    """Writes a torch zip archive; `storage_bytes`: key -> (dtype, raw little-endian bytes)."""
    declared_numel = declared_numel or {}
    storages = {key: (dtype, declared_numel.get(key, len(raw) // ITEMSIZE[dtype]))
                for key, (dtype, raw) in storage_bytes.items()}
    data = pickle_bytes if pickle_bytes is not None else state_dict_pickle(tensors, storages)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        for key, (_, raw) in storage_bytes.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", "3\n")
