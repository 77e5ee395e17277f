"""tf.train.Example records and TFRecord files without importing TensorFlow.

The features stage writes hundreds of thousands of tf.train.Examples from Beam workers.
Importing TensorFlow costs each worker process about nine seconds and a few hundred MB
before it does any work, so the workers build the protos with the protobuf runtime from
the same message schema (`tensorflow/core/example/{example,feature}.proto`, field
numbers and names identical) registered in a private descriptor pool, and frame TFRecord
files themselves with CRC32C from google-crc32c. The bytes equal TensorFlow's
`SerializeToString(deterministic=True)` and `tf.io.TFRecordWriter` output
(tests/test_tfrecords.py compares them), so SeqIO and tf.data read them unchanged.

Files go through Beam's FileSystems, so any filesystem a Beam runner reaches (local,
gs://, s3://) works.
"""
from __future__ import annotations

import functools
import struct
from typing import Any, Iterable, Iterator, Mapping

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from personalize_t5x.errors import InputError

_PACKAGE = "tensorflow"


@functools.lru_cache(maxsize=None)
def _message_classes() -> dict[str, Any]:
    """Example, Features, Feature, BytesList, FloatList and Int64List classes."""
    FieldProto = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="personalize_t5x/tf_example.proto", package=_PACKAGE, syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> descriptor_pb2.DescriptorProto:
        proto = file_proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            proto.field.add(name=field_name, number=number, type=field_type, label=label,
                            type_name=type_name or None)
        return proto

    repeated, optional = FieldProto.LABEL_REPEATED, FieldProto.LABEL_OPTIONAL
    # Repeated scalars are packed by default in proto3, as in TensorFlow's schema.
    message("BytesList", ("value", 1, FieldProto.TYPE_BYTES, repeated, ""))
    message("FloatList", ("value", 1, FieldProto.TYPE_FLOAT, repeated, ""))
    message("Int64List", ("value", 1, FieldProto.TYPE_INT64, repeated, ""))
    feature = message(
        "Feature",
        ("bytes_list", 1, FieldProto.TYPE_MESSAGE, optional, f".{_PACKAGE}.BytesList"),
        ("float_list", 2, FieldProto.TYPE_MESSAGE, optional, f".{_PACKAGE}.FloatList"),
        ("int64_list", 3, FieldProto.TYPE_MESSAGE, optional, f".{_PACKAGE}.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", ("feature", 1, FieldProto.TYPE_MESSAGE, repeated, f".{_PACKAGE}.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=FieldProto.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=FieldProto.TYPE_MESSAGE, label=optional, type_name=f".{_PACKAGE}.Feature")
    entry.options.map_entry = True
    message("Example", ("features", 1, FieldProto.TYPE_MESSAGE, optional, f".{_PACKAGE}.Features"))

    # A pool of its own: TensorFlow, when a process also imports it, registers the same
    # full names in the default pool.
    pool = descriptor_pool.DescriptorPool()
    file_descriptor = pool.AddSerializedFile(file_proto.SerializeToString())
    return {name: message_factory.GetMessageClass(file_descriptor.message_types_by_name[name])
            for name in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")}


def serialize_bytes_example(features: Mapping[str, bytes]) -> bytes:
    """A tf.train.Example of single-value bytes features, serialized deterministically."""
    example = _message_classes()["Example"]()
    example.features.SetInParent()  # present even when empty, as tf.train.Example writes it
    feature_map = example.features.feature
    for name, value in features.items():
        feature_map[name].bytes_list.value.append(value)
    return example.SerializeToString(deterministic=True)


def parse_bytes_example(record: bytes) -> dict[str, bytes]:
    """The single-value bytes features of a serialized tf.train.Example."""
    example = _message_classes()["Example"].FromString(record)
    out = {}
    for name, feature in example.features.feature.items():
        if feature.WhichOneof("kind") != "bytes_list" or len(feature.bytes_list.value) != 1:
            raise ValueError(f"feature {name!r} is not a single bytes value")
        out[name] = feature.bytes_list.value[0]
    return out


# ---------------------------------------------------------------------------- TFRecord framing
# Each record: uint64 length, masked CRC32C of the length, data, masked CRC32C of the data
# (all little-endian), as TensorFlow's record_writer.cc lays it out.

_MASK_DELTA = 0xA282EAD8


class TFRecordError(InputError):
    """A TFRecord file that is truncated or corrupt, located by file and record number."""

    def __init__(self, path: str, number: int, reason: str):
        super().__init__(path, number, "<record>", reason)


def read_bytes_examples(path: str) -> Iterator[tuple[int, dict[str, bytes]]]:
    """(record number, {feature: bytes}) of a TFRecord file of bytes-only tf.train.Examples."""
    for number, record in enumerate(iter_tfrecord(path), start=1):
        try:
            yield number, parse_bytes_example(record)
        except (ValueError, DecodeError) as error:
            raise TFRecordError(path, number, f"not a tf.train.Example of bytes features: {error}") from None


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", _masked_crc(length)), data, struct.pack("<I", _masked_crc(data))))


def write_tfrecord(path: str, records: Iterable[bytes]) -> int:
    """Writes records to a new uncompressed TFRecord file; returns how many."""
    from apache_beam.io.filesystems import FileSystems

    count = 0
    with FileSystems.create(path, compression_type="uncompressed") as f:
        pending = []
        for record in records:
            pending.append(frame_record(record))
            count += 1
            if len(pending) >= 256:
                f.write(b"".join(pending))
                pending.clear()
        f.write(b"".join(pending))
    return count


def iter_tfrecord(path: str, *, verify: bool = True) -> Iterator[bytes]:
    """Records of an uncompressed TFRecord file (any Beam filesystem): the project's one
    TFRecord reader. A bad length or CRC raises TFRecordError (a ValueError and an
    InputError naming the file and record)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        number = 0
        while header := f.read(12):
            number += 1
            if len(header) < 12:
                raise TFRecordError(path, number, "truncated header")
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if verify and _masked_crc(header[:8]) != length_crc:
                raise TFRecordError(path, number, "corrupt length")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(path, number, "truncated data")
            if verify and _masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(path, number, "corrupt data (CRC mismatch)")
            yield data
