"""The shared file layer: line reading through the background inflater, atomic gzip writes."""
import gzip
import threading
import time

import pytest

from personalize_t5x.errors import InputError
from personalize_t5x.io import files as io_lib


def _lines(path):
    return list(io_lib.iter_binary_lines(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_line_numbers_crlf_blank_lines_and_missing_final_newline(tmp_path, suffix):
    data = b'{"a": 1}\r\n\n{"b": 2}\n  \n{"c": 3}'
    path = tmp_path / f"x{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    assert _lines(path) == [(1, b'{"a": 1}'), (2, b""), (3, b'{"b": 2}'), (4, b"  "), (5, b'{"c": 3}')]


def test_lines_longer_than_a_block_and_split_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(io_lib, "_READ_BLOCK_BYTES", 64)  # compressed reads of 16 bytes
    lines = [(b"x" * n) for n in (0, 1, 63, 64, 65, 500, 3)]
    path = tmp_path / "long.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    assert [line for _, line in _lines(path)] == lines


def test_concatenated_gzip_members_read_as_one_stream(tmp_path):
    path = tmp_path / "members.jsonl.gz"
    path.write_bytes(gzip.compress(b"one\ntwo\n") + gzip.compress(b"three\n") + gzip.compress(b""))
    assert [line for _, line in _lines(path)] == [b"one", b"two", b"three"]


def test_truncated_gzip_raises_instead_of_ending_early(tmp_path):
    whole = gzip.compress(b"".join(b"line %d\n" % i for i in range(10_000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut.jsonl.gz:\d+: field '<file>': truncated compressed stream") as info:
        _lines(path)
    assert 0 < info.value.line <= 10_000


def test_corrupt_gzip_raises(tmp_path):
    whole = bytearray(gzip.compress(b"".join(b"line %d\n" % i for i in range(1000))))
    whole[len(whole) // 2] ^= 0xFF
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(whole))
    with pytest.raises(InputError, match=r"bad.jsonl.gz:\d+: field '<file>': corrupt or not gzip"):
        _lines(path)
    path.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(InputError, match=r"bad.jsonl.gz:1: field '<file>': corrupt or not gzip"):
        _lines(path)


def test_closing_the_reader_early_stops_its_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(io_lib, "_READ_BLOCK_BYTES", 1024)
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(b"line %d\n" % i for i in range(200_000))))
    before = {t.name for t in threading.enumerate()}
    lines = io_lib.iter_binary_lines(path)
    assert next(lines) == (1, b"line 0")
    lines.close()
    deadline = time.monotonic() + 5
    while any(t.name.startswith("gunzip:") and t.name not in before for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the inflater thread outlived its reader"
        time.sleep(0.01)


def test_gzip_writes_are_standard_and_byte_identical(tmp_path):
    records = [{"b": i, "a": "é" * i} for i in range(3000)]
    first, second = tmp_path / "1.jsonl.gz", tmp_path / "2.jsonl.gz"
    assert io_lib.write_jsonl(first, records) == 3000
    io_lib.write_jsonl(second, records)
    assert first.read_bytes() == second.read_bytes()
    # Readable by the standard library's gzip, with canonical (sorted-key) lines.
    lines = gzip.decompress(first.read_bytes()).decode("utf-8").splitlines()
    assert lines[2] == '{"a":"éé","b":2}'
    assert len(lines) == 3000


def test_failed_write_leaves_no_file(tmp_path):
    def records():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        io_lib.write_jsonl(tmp_path / "x.jsonl.gz", records())
    assert list(tmp_path.iterdir()) == []
