"""The T5X-style trainer: models, partitioning, checkpoints, train / eval / infer entry points."""
