"""The restricted torch unpickler against hostile archives (issue 11, item 4).

A tensor's shape, stride and offset come from the pickle and its storage from a separate
zip member: nothing ties them together but the loader's own check. Every case here must
end in a result equal to what the declared view means, or in one HFCheckpointError.
Never a segfault (rc 139), heap bytes, or another exception type.
"""
import itertools
import json
import random
import shutil
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

from personalize_t5x.errors import PersonalizeError
from personalize_t5x.network.hf_checkpoints import HFCheckpointError, import_hf_t5, read_torch_state_dict
from shared_paths import FIXTURES, REPO_ROOT
from torch_archives import ITEMSIZE, STORAGE_NAMES, Tensor, write_archive

FIXTURE = FIXTURES / "hf_t5_tiny"
NUMPY_DTYPES = {name: np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name) for name in STORAGE_NAMES}


def _storage(dtype: str, n: int) -> bytes:
    if dtype == "bool":
        return (np.arange(n) % 2).astype(np.bool_).tobytes()
    return np.arange(n).astype(NUMPY_DTYPES[dtype]).tobytes()


def _expected(storage: np.ndarray, offset, size, stride) -> np.ndarray:
    """What the view means, element by element (an oracle independent of as_strided)."""
    out = np.empty(size, storage.dtype)
    for index in itertools.product(*(range(n) for n in size)):
        out[index] = storage[offset + sum(i * s for i, s in zip(index, stride))]
    return out


def _one(tmp_path, dtype, n_storage, offset, size, stride, **kwargs):
    path = tmp_path / "pytorch_model.bin"
    write_archive(path, [Tensor("w", "0", offset, size, stride)], {"0": (dtype, _storage(dtype, n_storage))}, **kwargs)
    return path


@pytest.mark.parametrize("dtype", sorted(STORAGE_NAMES))
def test_valid_views_of_every_dtype_read_exactly(tmp_path, dtype):
    storage = np.frombuffer(_storage(dtype, 12), NUMPY_DTYPES[dtype])
    for offset, size, stride in [(0, (3, 4), (4, 1)), (0, (4, 3), (1, 4)), (5, (7,), (1,)), (11, (), ()),
                                 (2, (2, 2), (6, 3)), (0, (0, 5), (5, 1))]:
        got = read_torch_state_dict(_one(tmp_path, dtype, 12, offset, size, stride))["w"]
        assert got.dtype == NUMPY_DTYPES[dtype] and got.shape == size
        assert got.tobytes() == _expected(storage, offset, size, stride).tobytes()


@pytest.mark.parametrize("dtype", sorted(STORAGE_NAMES))
@pytest.mark.parametrize("offset, size, stride", [
    (0, (5,), (1,)),                  # one element past a 4-element storage: heap bytes before the fix
    (1, (4,), (1,)),                  # the offset pushes the last element out
    (4, (), ()),                      # a scalar just past the end
    (0, (2, 2), (3, 1)),              # the stride pushes it out
    (0, (50_000_000,), (1,)),         # 50M elements over 4: segfaulted before the fix
    (0, (10_000, 10_000), (0, 0)),    # fits by index, but 1e8 copies of one element
    (0, (2, 2), (1,)),                # size and stride disagree in length
    (-1, (2,), (1,)),                 # negative offset
    (0, (2,), (-1,)),                 # negative stride
    (0, (-2,), (1,)),                 # negative size
    (0, (2,), (2 ** 70,)),            # more than 64 bits
    (0, ("2",), (1,)),                # not an integer
    (0, (True,), (1,)),               # a bool is not a size
])
def test_views_outside_their_storage_are_refused(tmp_path, dtype, offset, size, stride):
    with pytest.raises(HFCheckpointError, match="pytorch_model.bin: .*(tensor|storage)"):
        read_torch_state_dict(_one(tmp_path, dtype, 4, offset, size, stride))


def test_storage_records_that_lie_are_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    write_archive(path, [Tensor("w", "0", 0, (4,), (1,))], {"0": ("float32", b"\0" * 14)})
    with pytest.raises(HFCheckpointError, match="not a whole number of float32 elements"):
        read_torch_state_dict(path)
    write_archive(path, [Tensor("w", "0", 0, (4,), (1,))], {"0": ("float32", b"\0" * 16)}, declared_numel={"0": 400})
    with pytest.raises(HFCheckpointError, match="declares 400 elements but holds 4"):
        read_torch_state_dict(path)
    write_archive(path, [Tensor("w", "9", 0, (4,), (1,))], {"9": ("float32", b"\0" * 16)})
    with zipfile_without(path, "archive/data/9"):
        with pytest.raises(HFCheckpointError, match="storage '9' is not in the archive"):
            read_torch_state_dict(path)
    write_archive(path, [Tensor("w", "0", 0, (2,), (1,))], {"0": ("bool", b"\x00\x07")})
    with pytest.raises(HFCheckpointError, match="bool storage"):
        read_torch_state_dict(path)


class zipfile_without:
    """Rewrites an archive without one member, for the duration of a with-block."""

    def __init__(self, path, member):
        import zipfile

        with zipfile.ZipFile(path) as src:
            items = [(info, src.read(info)) for info in src.infolist() if info.filename != member]
        with zipfile.ZipFile(path, "w") as dst:
            for info, data in items:
                dst.writestr(info, data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_hostile_archive_through_the_hf_importer_and_initial_checkpoint_loader(tmp_path):
    """INITIAL_CHECKPOINT_PATH pointing at a HF folder whose pytorch_model.bin is hostile."""
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    shutil.copy(FIXTURE / "t5_1_1" / "config.json", model_dir / "config.json")
    write_archive(model_dir / "pytorch_model.bin", [Tensor("shared.weight", "0", 0, (50_000_000,), (1,))],
                  {"0": ("float32", b"\0" * 16)})
    with pytest.raises(HFCheckpointError, match="needs storage element 49999999"):
        import_hf_t5(model_dir)
    from personalize_t5x.trainer import checkpoints

    with pytest.raises(PersonalizeError, match=r"checkpoint .*hf.*storage holds 4"):
        checkpoints.load_initial_params(str(model_dir), abstract_params={})


FUZZ_CHILD = textwrap.dedent("""
    import random, sys, itertools, pathlib, zipfile
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from torch_archives import Tensor, write_archive
    from personalize_t5x.network.hf_checkpoints import HFCheckpointError, read_torch_state_dict
    rng = random.Random(int(sys.argv[3]))
    tmp = pathlib.Path(sys.argv[2])
    counts = {"read": 0, "refused": 0}
    # 1. random views over random storages, checked against an independent oracle
    for case in range(400):
        n = rng.choice([0, 1, 3, 4, 16, 64])
        ndim = rng.choice([0, 1, 2, 3])
        size = tuple(rng.choice([0, 1, 2, 3, 5, 8, 4096]) for _ in range(ndim))
        stride = tuple(rng.choice([0, 1, 2, 3, 7, 64, 1 << 40]) for _ in range(ndim))
        offset = rng.choice([0, 1, 3, n - 1 if n else 0, n, 1 << 33])
        path = tmp / f"f{case}.bin"
        data = np.arange(n, dtype=np.float32)
        write_archive(path, [Tensor("w", "0", offset, size, stride)], {"0": ("float32", data.tobytes())})
        numel = int(np.prod(size)) if size else 1
        last = offset + sum((a - 1) * s for a, s in zip(size, stride))
        valid = numel == 0 or (last < n and numel <= n)
        try:
            got = read_torch_state_dict(path)["w"]
        except HFCheckpointError:
            assert not valid, (offset, size, stride, n)
            counts["refused"] += 1
            continue
        assert valid, ("read an invalid view", offset, size, stride, n)
        want = np.empty(size, np.float32)
        for index in itertools.product(*(range(a) for a in size)):
            want[index] = data[offset + sum(i * s for i, s in zip(index, stride))]
        assert np.array_equal(got, want), (offset, size, stride)
        counts["read"] += 1
    # 2. random byte flips in a real torch.save archive's pickle and storages
    real = pathlib.Path(sys.argv[4])
    with zipfile.ZipFile(real) as src:
        members = [(info.filename, src.read(info)) for info in src.infolist()]
    for case in range(300):
        mutated = []
        for name, data in members:
            data = bytearray(data)
            if data and (name.endswith("data.pkl") or rng.random() < 0.2):
                for _ in range(rng.choice([1, 2, 8])):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            mutated.append((name, bytes(data)))
        path = tmp / f"m{case}.bin"
        with zipfile.ZipFile(path, "w") as dst:
            for name, data in mutated:
                dst.writestr(name, data)
        try:
            state = read_torch_state_dict(path)
            assert all(isinstance(v, np.ndarray) for v in state.values())
            counts["read"] += 1
        except HFCheckpointError:
            counts["refused"] += 1
    # The peak of this process image alone. getrusage's ru_maxrss is no good here: Linux
    # carries the parent's peak across fork/vfork and exec, so a child of an xdist worker
    # that once trained a model reports that model's memory. VmHWM belongs to the mm.
    status = pathlib.Path("/proc/self/status").read_text()
    counts["peak_mb"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024
    print(counts)
""")


def test_fuzzed_archives_end_in_a_result_or_one_error_never_a_crash(tmp_path):
    """Run in a child so that a segfault shows as its return code, not a dead test run."""
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ_CHILD)
    work = tmp_path / "work"
    work.mkdir()
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(script), str(REPO_ROOT / "tests" / "robustness"), str(work), "11",
         str(FIXTURE / "torch_bin" / "t5_1_1_fp16.bin")],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    counts = json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert counts["read"] > 0 and counts["refused"] > 0, counts
    # No hostile archive may make the loader allocate without bound (a flipped memo index
    # once asked the C unpickler for a 26 GB memo table): the child's peak stays small.
    assert counts["peak_mb"] < 1024, f"the fuzz child peaked at {counts['peak_mb']:.0f} MB"


def test_pickle_memo_bomb_is_refused_before_unpickling(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    bomb = b"\x80\x02}r\x16\x1a\xff\xc3."  # EMPTY_DICT, LONG_BINPUT 3288275478, STOP
    write_archive(path, [], {}, pickle_bytes=bomb)
    with pytest.raises(HFCheckpointError, match="pickle memo index 3288275478 at byte 3"):
        read_torch_state_dict(path)
