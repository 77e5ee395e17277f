"""personalize_t5x.io.tfrecords writes exactly what TensorFlow writes, without importing it."""
import random
import subprocess
import sys

import pytest
import tensorflow as tf

from personalize_t5x.io import tfrecords


def _tf_example_bytes(features):
    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in features.items()}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def _random_features(rng):
    names = rng.sample(["target", "user_id", "a", "z", "ctx", "rank_doc_bm25", "émoji"], rng.randint(0, 7))
    alphabet = "abc xyz\n\té漢字🙂\x00"
    return {n: "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))).encode("utf-8") for n in names}


def test_examples_are_byte_identical_to_tensorflow_and_parse_back():
    rng = random.Random(0)
    for _ in range(200):
        features = _random_features(rng)
        ours = tfrecords.serialize_bytes_example(features)
        assert ours == _tf_example_bytes(features)
        assert tfrecords.parse_bytes_example(ours) == features
        parsed = tf.train.Example.FromString(ours)
        assert {k: v.bytes_list.value[0] for k, v in parsed.features.feature.items()} == features


def test_parse_refuses_non_bytes_features():
    record = tf.train.Example(features=tf.train.Features(feature={
        "n": tf.train.Feature(int64_list=tf.train.Int64List(value=[3]))})).SerializeToString()
    with pytest.raises(ValueError, match="'n'"):
        tfrecords.parse_bytes_example(record)


def test_files_are_byte_identical_to_tfrecordwriter_and_read_by_tf_data(tmp_path):
    records = [b"", b"x", b"\x00" * 70_000] + [tfrecords.serialize_bytes_example(_random_features(random.Random(i))) for i in range(300)]
    ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "theirs.tfrecord"
    assert tfrecords.write_tfrecord(str(ours), records) == len(records)
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for record in records:
            writer.write(record)
    assert ours.read_bytes() == theirs.read_bytes()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records
    assert list(tfrecords.iter_tfrecord(str(theirs))) == records
    tfrecords.write_tfrecord(str(tmp_path / "empty.tfrecord"), [])
    assert (tmp_path / "empty.tfrecord").read_bytes() == b""


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_files_raise(tmp_path, damage):
    path = tmp_path / "r.tfrecord"
    tfrecords.write_tfrecord(str(path), [b"hello world"] * 3)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-3]
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="record"):
        list(tfrecords.iter_tfrecord(str(path)))


def test_module_does_not_import_tensorflow():
    code = ("import sys; from personalize_t5x.io import tfrecords; "
            "tfrecords.serialize_bytes_example({'a': b'b'}); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
