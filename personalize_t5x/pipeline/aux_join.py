"""Joins the SumCtx and SynCtx models' predictions into the generation features by example_id.

After the features stage (which writes the weak labels and `aux_half`), the auxiliary
models train on their half of the training users (SeqIO tasks
`personalize_<dataset>_aux_{sum_ctx,syn_ctx}`, gin/experiments/aux_*.gin) and write
predictions for every split (`personalize_t5x.trainer.infer` on the `infer_<split>` splits:
JSONL records with `example_id` and `prediction`). This step puts each prediction into
`summary_ctx` (SumCtx) or `keywords_ctx` (SynCtx) of the example's record.

Which text fills the training split (`train_inputs`):
  "predicted" (default, the paper's design): the model's prediction, on every split. The
    weak labels are built from the target itself; a generator trained on them would learn
    to lean on an input that is never available at test time.
  "weak_label": the weak label on the training split (predictions on validation/test), for
    ablations.

Shards are rewritten in place, each through a temporary file renamed into place, with the
same record order; the features manifest then gets the new sizes and sha256 and an
"aux_predictions" entry (the prediction files' sha256 and the mode), so a features rerun
still recognises the split as finished, and a rerun of this step with the same inputs
rewrites the same bytes. Every example must have a prediction: a missing one is an error
naming the file and the example (a partial join would silently empty a row's inputs).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from typing import Any, Mapping, Sequence

from apache_beam.io.filesystems import FileSystems

from personalize_t5x import feature_names as fn
from personalize_t5x.errors import InputError
from personalize_t5x.io import files as io_lib
from personalize_t5x.io import tfrecords

TRAIN_INPUTS = ("predicted", "weak_label")
# "sum_ctx_ind": the abstractive SumCtxInd (a user's summarizer over the ranked entries;
# registry.register_summarize_task): always its predictions, on every split.
PREDICTED_FEATURE = {"sum_ctx": fn.SUMMARY_CTX, "syn_ctx": fn.KEYWORDS_CTX, "sum_ctx_ind": fn.SUMMARY_CTX_IND}
WEAK_LABEL_FEATURE = {"sum_ctx": fn.SUMMARY_CTX_WEAK_LABEL, "syn_ctx": fn.KEYWORDS_CTX_WEAK_LABEL}


def read_predictions(path: str) -> dict[str, str]:
    """example_id -> prediction of one prediction file (located errors for bad records)."""
    if not os.path.exists(path):
        raise InputError(path, 0, "<file>", "no such prediction file (run the auxiliary model's inference first)")
    predictions: dict[str, str] = {}
    for number, record in io_lib.iter_json_objects(path):
        example_id, prediction = record.get("example_id"), record.get("prediction")
        if not isinstance(example_id, str):
            raise InputError(path, number, "example_id", "missing or not a string")
        if not isinstance(prediction, str):
            raise InputError(path, number, "prediction", "missing or not a string")
        if example_id in predictions:
            raise InputError(path, number, "example_id", f"duplicate {example_id!r}")
        predictions[example_id] = prediction
    return predictions


def _sha256(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def join_aux_predictions(
    *,
    features_dir: str,
    prediction_files: Mapping[str, Mapping[str, str]],
    train_inputs: str = "predicted",
    splits: Sequence[str] = fn.SPLITS,
) -> dict[str, Any]:
    """Fills summary_ctx / keywords_ctx of `splits` from `prediction_files[model][split]`
    (model in "sum_ctx", "syn_ctx", "sum_ctx_ind"; a model may be left out). Returns counts per split."""
    import json

    if train_inputs not in TRAIN_INPUTS:
        raise ValueError(f"train_inputs must be one of {TRAIN_INPUTS}, got {train_inputs!r}")
    for model in prediction_files:
        if model not in PREDICTED_FEATURE:
            raise ValueError(f"unknown auxiliary model {model!r}; choose from {tuple(PREDICTED_FEATURE)}")
    manifest_path = posixpath.join(features_dir, "manifest.json")
    if not os.path.exists(manifest_path):
        raise InputError(manifest_path, 0, "<file>", "no features manifest: run `personalize-t5x features` first")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    counts: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for split in splits:
        entry = manifest.get("splits", {}).get(split)
        if entry is None:
            raise InputError(manifest_path, 0, f"splits.{split}", "split not computed by the features stage")
        use_predictions = {model: split != "train" or train_inputs == "predicted" or model not in WEAK_LABEL_FEATURE
                           for model in prediction_files}
        predictions = {}
        for model, by_split in prediction_files.items():
            if use_predictions[model]:
                path = by_split.get(split)
                if path is None:
                    raise ValueError(f"no {model} prediction file given for split {split!r}")
                predictions[model] = (path, read_predictions(path))
                sources[f"{model}/{split}"] = {"file": os.path.basename(path), "sha256": _sha256(path)[0]}
        joined = 0
        for name in sorted(n for n in entry["files"] if n.startswith(f"{split}.tfrecord-")):
            path = posixpath.join(features_dir, name)
            records = []
            for data in tfrecords.iter_tfrecord(path):
                features = tfrecords.parse_bytes_example(data)
                example_id = features[fn.EXAMPLE_ID].decode("utf-8")
                for model in prediction_files:
                    if use_predictions[model]:
                        prediction_path, by_id = predictions[model]
                        if example_id not in by_id:
                            raise InputError(prediction_path, 0, "example_id", f"no prediction for {example_id!r} ({split})")
                        text = by_id[example_id]
                    else:
                        text = features[WEAK_LABEL_FEATURE[model]].decode("utf-8")
                    features[PREDICTED_FEATURE[model]] = text.encode("utf-8")
                ordered = {k: features.get(k, b"") for k in fn.GENERATION_TEXT_FEATURES}
                records.append(tfrecords.serialize_bytes_example(ordered))
                joined += 1
            temp_path = posixpath.join(features_dir, f".tmp-{uuid.uuid4().hex}-{name}")
            tfrecords.write_tfrecord(temp_path, records)
            FileSystems.rename([temp_path], [path])
            file_hash, size = _sha256(path)
            entry["files"][name].update({"sha256": file_hash, "bytes": size})
        counts[split] = joined
    manifest["aux_predictions"] = {"train_inputs": train_inputs, "sources": sources, "models": sorted(prediction_files)}
    io_lib.write_json(manifest_path, manifest)
    return counts
