"""One I/O layer: located JSONL reading, atomic deterministic files, TFRecords without TensorFlow."""
