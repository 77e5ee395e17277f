"""SeqIO tasks and mixtures for every row of the paper, over the features stage's TFRecords.

Names (all datasets follow this one pattern; `<dataset>` is the dataset name lowercased
with every character outside [a-z0-9_] replaced by "_"):

    personalize_<dataset>_<variant>                 one generation task per variant
    personalize_<dataset>_author_distinction        the author-distinction task
    personalize_<dataset>_<variant>_author_mix      <variant> mixed 1:1 with the author task

`<variant>` is one of personalize_t5x.tasks.prompts.VARIANTS: immed_ctx, user_id, recent_doc,
rank_doc_bm25, rank_doc_dense, rank_snippet, rank_doc_by_snpt, sum_ctx_ind, sum_ctx,
syn_ctx_ind, syn_ctx, no_ranked_entries, remove_doc_start, immed_ctx_at_end. The paper's
AuthorPred row is `personalize_<dataset>_syn_ctx_author_mix`; the Table 5 ablations
compare `..._<ablation>_author_mix` against it.

Every task:
- source: seqio.TFExampleDataSource over `<features_dir>/<split>.tfrecord-*` (author
  task: `author_pairs_<split>.tfrecord-*`), splits train / validation / test, parsing
  only the bytes features the variant reads (a missing one fails with its name);
- preprocessors: the layout of personalize_t5x.tasks.prompts (inputs / targets text) ->
  seqio.preprocessors.tokenize -> seqio.CacheDatasetPlaceholder() ->
  seqio.preprocessors.append_eos_after_trim. Everything before the placeholder is
  deterministic, so SeqIO's Beam cache job (`python -m seqio.scripts.cache_tasks_main
  --module_import=tasks --tasks=<regex> --output_cache_dir=DIR`, with the data
  directory variable below set) can cache any task, and T5X's USE_CACHED_TASKS reads it;
- output features `inputs` and `targets` (the dataset's vocabulary, EOS appended);
  generation examples also carry `example_id` and `immediate_context` (strings) for
  prediction files and postprocessing (remove_doc_start also its whole `target`);
- metrics (personalize_t5x.tasks.metrics): generation tasks BLEU, ROUGE-1/2/L (%); the
  author task accuracy (%). RemoveDocStart's postprocessing puts the immediate context
  back before its targets and predictions (prompts.restore_doc_start), so every variant
  is scored on the whole document (comparable to the other rows).

Vocabulary of a dataset, first found: the `vocabulary` argument (a path to any
SentencePiece model, e.g. T5's, or a seqio.Vocabulary); the environment variable
PERSONALIZE_T5X_VOCAB (a model path for every dataset); `<features_dir>/../vocab/spm.model`
(what `personalize-t5x vocab --output DATA/<dataset>/vocab/spm.model` writes). SeqIO adds
`extra_ids` sentinels (100 by default).

Data directory: when PERSONALIZE_T5X_DATA_DIR is set, `import tasks` registers every
`<dataset>` folder under it that has a `features/` subfolder:

    $PERSONALIZE_T5X_DATA_DIR/<dataset>/features/      TFRecords of `personalize-t5x features`
    $PERSONALIZE_T5X_DATA_DIR/<dataset>/vocab/spm.model  SentencePiece model (default vocabulary)
    $PERSONALIZE_T5X_DATA_DIR/<dataset>/tasks.json       optional: register_dataset options,
        e.g. {"vocabulary": "/models/t5/spm.model", "extra_ids": 100,
              "summary_ranker": "rank_doc_bm25"}  (a relative vocabulary path is
        relative to the dataset folder)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from typing import Any, Iterable, Mapping

import seqio
import tensorflow as tf

from personalize_t5x import feature_names as fn
from personalize_t5x.tasks import metrics
from personalize_t5x.tasks import prompts
from personalize_t5x.tasks import vocab as vocab_lib

DATA_DIR_ENV = "PERSONALIZE_T5X_DATA_DIR"
VOCAB_ENV = "PERSONALIZE_T5X_VOCAB"
NAME_PREFIX = "personalize"
AUTHOR_TASK = "author_distinction"
MIXTURE_SUFFIX = "author_mix"
DATASET_OPTIONS_FILE = "tasks.json"
# Features every generation task keeps beside inputs/targets.
PASSTHROUGH_FEATURES = (fn.EXAMPLE_ID, fn.IMMEDIATE_CONTEXT)

_REGISTERED: dict[str, "RegisteredDataset"] = {}


@dataclasses.dataclass(frozen=True)
class RegisteredDataset:
    """What `register_dataset` registered: names by variant, the author task, the vocabulary."""

    name: str
    features_dir: str
    summary_ranker: str
    vocabulary: seqio.Vocabulary
    tasks: Mapping[str, str]  # variant -> generation task name
    author_task: str
    mixtures: Mapping[str, str]  # variant -> mixture name

    @property
    def all_names(self) -> tuple[str, ...]:
        return (*self.tasks.values(), self.author_task, *self.mixtures.values())


def dataset_key(name: str) -> str:
    """The dataset part of task names: lowercased, [^a-z0-9_] -> "_"."""
    key = re.sub(r"[^a-z0-9_]", "_", name.strip().lower())
    if not key.strip("_"):
        raise ValueError(f"dataset name {name!r} has no letter or digit")
    return key


def task_name(dataset: str, variant: str) -> str:
    if variant not in prompts.VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {prompts.VARIANTS}")
    return f"{NAME_PREFIX}_{dataset_key(dataset)}_{variant}"


def author_task_name(dataset: str) -> str:
    return f"{NAME_PREFIX}_{dataset_key(dataset)}_{AUTHOR_TASK}"


def mixture_name(dataset: str, variant: str) -> str:
    return f"{task_name(dataset, variant)}_{MIXTURE_SUFFIX}"


def default_vocabulary_path(features_dir: str) -> str:
    """`<features_dir>/../vocab/spm.model`."""
    parent = os.path.dirname(os.fspath(features_dir).rstrip("/")) or "."
    return os.path.join(parent, "vocab", "spm.model")


def resolve_vocabulary(vocabulary: str | os.PathLike | seqio.Vocabulary | None, features_dir: str,
                       extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS) -> seqio.Vocabulary:
    """The dataset's vocabulary, in the order of the module docstring."""
    if isinstance(vocabulary, seqio.Vocabulary):
        return vocabulary
    if vocabulary is not None:
        path, origin = os.fspath(vocabulary), "the vocabulary argument"
    elif os.environ.get(VOCAB_ENV):
        path, origin = os.environ[VOCAB_ENV], VOCAB_ENV
    else:
        path, origin = default_vocabulary_path(features_dir), "the default location"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"no SentencePiece model at {path} ({origin}); train one with `personalize-t5x vocab "
            f"--examples-dir EXAMPLES --output {path}`, pass vocabulary=PATH, or set {VOCAB_ENV}"
        )
    return _sentencepiece_vocabulary(path, extra_ids)


@functools.lru_cache(maxsize=None)
def _sentencepiece_vocabulary(path: str, extra_ids: int) -> seqio.Vocabulary:
    # One object per model file, so that datasets sharing a model share a vocabulary.
    return vocab_lib.get_vocabulary(path, extra_ids=extra_ids)


# ---------------------------------------------------------------------- preprocessors


def build_text_features(dataset: tf.data.Dataset, *, layout: prompts.Layout,
                        passthrough: tuple[str, ...] = ()) -> tf.data.Dataset:
    """Parsed features -> {"inputs", "targets"} text (prompts.render_tf) + passthrough."""

    def build(features):
        example = prompts.render_tf(layout, features)
        for name in passthrough:
            example[name] = features[name]
        return example

    return dataset.map(build, num_parallel_calls=tf.data.AUTOTUNE)


def _as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def restore_doc_start_postprocess(output, example=None, is_target=False) -> str:  # noqa: ARG001
    """RemoveDocStart: targets and predictions are scored as whole documents."""
    if example is None:
        return _as_text(output)
    return prompts.restore_doc_start(_as_text(output), _as_text(example[fn.IMMEDIATE_CONTEXT]),
                                     _as_text(example[fn.TARGET]))


def _string_features(names: Iterable[str]) -> dict[str, tf.io.FixedLenFeature]:
    return {name: tf.io.FixedLenFeature([], tf.string) for name in dict.fromkeys(names)}


def _preprocessors(layout: prompts.Layout, passthrough: tuple[str, ...]) -> list:
    return [
        functools.partial(build_text_features, layout=layout, passthrough=passthrough),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ]


# ------------------------------------------------------------------------ registration


def register_dataset(
    name: str,
    *,
    features_dir: str | os.PathLike,
    vocabulary: str | os.PathLike | seqio.Vocabulary | None = None,
    extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS,
    summary_ranker: str = prompts.DEFAULT_SUMMARY_RANKER,
    variants: Iterable[str] = prompts.VARIANTS,
    splits: Iterable[str] = fn.SPLITS,
    overwrite: bool = False,
) -> RegisteredDataset:
    """Registers one dataset's generation tasks, author task and 1:1 mixtures.

    Args:
      name: the dataset's name (becomes `<dataset>` in task names, see dataset_key).
      features_dir: the output folder of `personalize-t5x features` (local or gs://).
        Files are only read when a dataset is built, so it may still be empty.
      vocabulary: a SentencePiece model path or a seqio.Vocabulary; None picks the
        default (module docstring).
      extra_ids: sentinel ids SeqIO adds to a SentencePiece model given by path.
      summary_ranker: the ranking strategy whose text is the "past passages" of the
        summary (sum_*), synthesis (syn_*) and Table 5 variants.
      variants: the generation variants to register (default: all).
      splits: the splits of every task.
      overwrite: replace this dataset's tasks and mixtures if already registered.

    Returns:
      A RegisteredDataset naming everything registered.
    """
    key = dataset_key(name)
    features_dir = os.fspath(features_dir).rstrip("/") or "/"
    variants = tuple(variants)
    for variant in variants:
        task_name(key, variant)  # validates the variant
    layouts = {v: prompts.generation_layout(v, summary_ranker=summary_ranker) for v in variants}
    splits = tuple(splits)
    vocab = resolve_vocabulary(vocabulary, features_dir, extra_ids)

    tasks = {v: task_name(key, v) for v in variants}
    author = author_task_name(key)
    mixtures = {v: mixture_name(key, v) for v in variants}
    registered = RegisteredDataset(key, features_dir, summary_ranker, vocab, tasks, author, mixtures)

    if key in _REGISTERED or any(n in seqio.TaskRegistry.names() or n in seqio.MixtureRegistry.names()
                                 for n in registered.all_names):
        if not overwrite:
            raise ValueError(f"dataset {key!r} is already registered; pass overwrite=True to replace it")
        unregister_dataset(key)

    output_features = _text_features(vocab)
    for variant, layout in layouts.items():
        # RemoveDocStart also keeps the whole document, to be scored on it.
        passthrough = PASSTHROUGH_FEATURES + ((fn.TARGET,) if layout.drop_start_from_target else ())
        source = seqio.TFExampleDataSource(
            {split: fn.generation_file_pattern(features_dir, split) for split in splits},
            feature_description=_string_features([*layout.required_features, *passthrough]),
        )
        seqio.TaskRegistry.add(
            tasks[variant],
            source=source,
            output_features=output_features,
            preprocessors=_preprocessors(layout, passthrough),
            postprocess_fn=restore_doc_start_postprocess if layout.drop_start_from_target else None,
            metric_fns=[metrics.bleu, metrics.rouge],
        )
    author_layout = prompts.AUTHOR_LAYOUT
    seqio.TaskRegistry.add(
        author,
        source=seqio.TFExampleDataSource(
            {split: fn.author_pairs_file_pattern(features_dir, split) for split in splits},
            feature_description=_string_features(author_layout.required_features),
        ),
        output_features=output_features,
        preprocessors=_preprocessors(author_layout, ()),
        postprocess_fn=metrics.author_postprocess,
        metric_fns=[metrics.accuracy],
    )
    for variant in variants:
        seqio.MixtureRegistry.add(mixtures[variant], [(tasks[variant], 1.0), (author, 1.0)])

    _REGISTERED[key] = registered
    return registered


def unregister_dataset(name: str) -> None:
    """Removes a dataset's tasks and mixtures from SeqIO's registries."""
    key = dataset_key(name)
    registered = _REGISTERED.pop(key, None)
    names = registered.all_names if registered else (
        *(task_name(key, v) for v in prompts.VARIANTS), author_task_name(key),
        *(mixture_name(key, v) for v in prompts.VARIANTS))
    for n in names:
        seqio.MixtureRegistry.remove(n)
        seqio.TaskRegistry.remove(n)


def registered_datasets() -> dict[str, RegisteredDataset]:
    """Datasets registered in this process, by dataset key."""
    return dict(_REGISTERED)


_OPTION_KEYS = {"vocabulary", "extra_ids", "summary_ranker", "variants"}


def _read_options(path: str) -> dict[str, Any]:
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            options = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(options, dict) or set(options) - _OPTION_KEYS:
        raise ValueError(f"{path}: expected a JSON object with keys among {sorted(_OPTION_KEYS)}")
    return options


def _is_absolute(path: str) -> bool:
    return os.path.isabs(path) or "://" in path


def register_data_dir(data_dir: str | os.PathLike | None = None, *, overwrite: bool = False
                      ) -> list[RegisteredDataset]:
    """Registers every `<dataset>/features/` under `data_dir` (default: $PERSONALIZE_T5X_DATA_DIR).

    Does nothing when neither is set. Datasets are registered in name order.
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else os.environ.get(DATA_DIR_ENV, "")
    if not data_dir:
        return []
    if not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(f"{DATA_DIR_ENV}={data_dir} is not a directory")
    registered = []
    for entry in sorted(tf.io.gfile.listdir(data_dir)):
        folder = os.path.join(data_dir, entry.rstrip("/"))
        features_dir = os.path.join(folder, "features")
        if not tf.io.gfile.isdir(features_dir):
            continue
        options = _read_options(os.path.join(folder, DATASET_OPTIONS_FILE))
        if isinstance(options.get("vocabulary"), str) and not _is_absolute(options["vocabulary"]):
            options["vocabulary"] = os.path.join(folder, options["vocabulary"])
        registered.append(register_dataset(entry.rstrip("/"), features_dir=features_dir, overwrite=overwrite,
                                           **options))
        register_aux_tasks(entry.rstrip("/"), features_dir=features_dir, vocabulary=registered[-1].vocabulary,
                           summary_ranker=registered[-1].summary_ranker, overwrite=True)
        register_summarize_task(entry.rstrip("/"), features_dir=features_dir, vocabulary=registered[-1].vocabulary,
                                summary_ranker=registered[-1].summary_ranker, overwrite=True)
        logging.info("registered %d tasks and mixtures of %s", len(registered[-1].all_names), folder)
    return registered


# ------------------------------------------------------------- auxiliary models (stages 3, 4)

# Splits of an auxiliary task. Training and evaluation read only the training split's
# files: "train" is the auxiliary half of the training users (aux_half == "aux"),
# "validation" the other half (aux_half == "generation": weak labels the model never trained
# on, for its evaluation). "infer_<split>" is every example of <split>, unfiltered, to
# write the predictions that fill summary_ctx / keywords_ctx (targets: the weak label on
# the training split, "" elsewhere).
AUX_SPLITS = ("train", "validation", *(f"infer_{s}" for s in fn.SPLITS))


def aux_task_name(dataset: str, model: str) -> str:
    if model not in prompts.AUX_MODELS:
        raise ValueError(f"unknown auxiliary model {model!r}; choose from {prompts.AUX_MODELS}")
    return f"{NAME_PREFIX}_{dataset_key(dataset)}_aux_{model}"


def aux_split_filter(split: str) -> tuple[str, str | None]:
    """(features split to read, aux_half to keep or None for all) of an auxiliary split."""
    if split == "train":
        return "train", fn.AUX_HALVES[0]
    if split == "validation":
        return "train", fn.AUX_HALVES[1]
    if split.startswith("infer_") and split[len("infer_"):] in fn.SPLITS:
        return split[len("infer_"):], None
    raise ValueError(f"unknown auxiliary split {split!r}; choose from {AUX_SPLITS}")


def _aux_dataset_fn(features_dir: str, feature_names: tuple[str, ...]):
    spec = _string_features((*feature_names, fn.AUX_HALF))

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        source_split, half = aux_split_filter(split)
        files = sorted(tf.io.gfile.glob(fn.generation_file_pattern(features_dir, source_split)))
        if not files:
            raise FileNotFoundError(f"no {fn.generation_file_pattern(features_dir, source_split)}: run `personalize-t5x features`")
        files_ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle_files:
            files_ds = files_ds.shuffle(len(files), seed=seed)
        dataset = files_ds.interleave(tf.data.TFRecordDataset, deterministic=True)
        dataset = dataset.map(lambda record: tf.io.parse_single_example(record, spec))
        if half is not None:
            dataset = dataset.filter(lambda example: tf.equal(example[fn.AUX_HALF], half))
        return dataset

    return dataset_fn


def _make_room_for_task(task: str, *, overwrite: bool) -> None:
    """Removes an earlier registration of `task` when `overwrite`, else refuses to shadow it."""
    if task in seqio.TaskRegistry.names():
        if not overwrite:
            raise ValueError(f"task {task!r} is already registered; pass overwrite=True to replace it")
        seqio.TaskRegistry.remove(task)


def _text_features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {"inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
            "targets": seqio.Feature(vocabulary=vocab, add_eos=True)}


def register_aux_tasks(
    name: str,
    *,
    features_dir: str | os.PathLike,
    vocabulary: str | os.PathLike | seqio.Vocabulary | None = None,
    extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS,
    summary_ranker: str = prompts.DEFAULT_SUMMARY_RANKER,
    overwrite: bool = False,
) -> dict[str, str]:
    """Registers the SumCtx and SynCtx auxiliary tasks of one dataset; returns {model: task}.

    Source: seqio.FunctionDataSource over the features stage's generation TFRecords with
    the splits of AUX_SPLITS (a split filters by `aux_half`, so one seeded half of the
    training users trains the model and no validation or test example ever does).
    Inputs: prompts.aux_layout; targets: the weak label. Metrics: BLEU and ROUGE.
    """
    features_dir = os.fspath(features_dir).rstrip("/") or "/"
    vocab = resolve_vocabulary(vocabulary, features_dir, extra_ids)
    output_features = _text_features(vocab)
    names = {}
    for model in prompts.AUX_MODELS:
        task = aux_task_name(name, model)
        _make_room_for_task(task, overwrite=overwrite)
        layout = prompts.aux_layout(model, summary_ranker=summary_ranker)
        passthrough = (fn.EXAMPLE_ID,)
        seqio.TaskRegistry.add(
            task,
            source=seqio.FunctionDataSource(_aux_dataset_fn(features_dir, (*layout.required_features, *passthrough)),
                                            splits=AUX_SPLITS),
            output_features=output_features,
            preprocessors=_preprocessors(layout, passthrough),
            metric_fns=[metrics.bleu, metrics.rouge],
        )
        names[model] = task
    return names


def unregister_aux_tasks(name: str) -> None:
    for model in prompts.AUX_MODELS:
        seqio.TaskRegistry.remove(aux_task_name(name, model))


# ------------------------------------------------ abstractive SumCtxInd (a user's summarizer)

SUMMARIZE_PREFIX = "summarize: "  # T5's CNN/DailyMail input format
SUMMARIZE_SPLITS = tuple(f"infer_{s}" for s in fn.SPLITS)


def summarize_task_name(name: str) -> str:
    return f"{NAME_PREFIX}_{dataset_key(name)}_summarize_ranked"


def _summarize_inputs(dataset: tf.data.Dataset, *, ranked_feature: str) -> tf.data.Dataset:
    def build(features):
        return {"inputs": tf.strings.join([SUMMARIZE_PREFIX, features[ranked_feature]]),
                "targets": tf.constant(""), fn.EXAMPLE_ID: features[fn.EXAMPLE_ID]}

    return dataset.map(build, num_parallel_calls=tf.data.AUTOTUNE)


def register_summarize_task(
    name: str,
    *,
    features_dir: str | os.PathLike,
    vocabulary: str | os.PathLike | seqio.Vocabulary | None = None,
    extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS,
    summary_ranker: str = prompts.DEFAULT_SUMMARY_RANKER,
    overwrite: bool = False,
) -> str:
    """The abstractive SumCtxInd: `summarize: <ranked entries>` for every example of every
    split (splits infer_train / infer_validation / infer_test; no targets), for inference
    with a user's summarization checkpoint (T5X or Hugging Face T5: CHECKPOINT_PATH loads
    them as training's INITIAL_CHECKPOINT_PATH does; its own vocabulary, e.g. T5's
    spm model). `personalize-t5x aux-join --models sum_ctx_ind` puts the predictions into
    summary_ctx_ind. gin/experiments/sum_ctx_ind_abstractive_infer.gin."""
    features_dir = os.fspath(features_dir).rstrip("/") or "/"
    vocab = resolve_vocabulary(vocabulary, features_dir, extra_ids)
    task = summarize_task_name(name)
    _make_room_for_task(task, overwrite=overwrite)
    ranked = fn.ranked_text_feature(summary_ranker)
    seqio.TaskRegistry.add(
        task,
        source=seqio.FunctionDataSource(_aux_dataset_fn(features_dir, (ranked, fn.EXAMPLE_ID)), splits=SUMMARIZE_SPLITS),
        output_features=_text_features(vocab),
        preprocessors=[functools.partial(_summarize_inputs, ranked_feature=ranked), seqio.preprocessors.tokenize,
                       seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim],
        metric_fns=[],
    )
    return task
