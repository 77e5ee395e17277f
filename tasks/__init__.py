"""The SeqIO registry of personalize-t5x: `import tasks` (in Python or a gin file, as T5X does).

Importing this package registers, for every dataset folder under the directory named by
the environment variable PERSONALIZE_T5X_DATA_DIR (unset: none), one generation task per
variant of the paper, the author-distinction task, and each variant mixed 1:1 with it:

    personalize_<dataset>_<variant>
    personalize_<dataset>_author_distinction
    personalize_<dataset>_<variant>_author_mix

Register any other features folder with one call:

    import tasks
    tasks.register_dataset("mydata", features_dir="/data/mydata/features",
                           vocabulary="/data/mydata/vocab/spm.model")

tasks/README.md and personalize_t5x/tasks/registry.py document names, layouts, vocabularies and options.
"""
from personalize_t5x.tasks.registry import (  # noqa: F401
    DATA_DIR_ENV,
    VOCAB_ENV,
    RegisteredDataset,
    author_task_name,
    dataset_key,
    mixture_name,
    register_data_dir,
    register_dataset,
    registered_datasets,
    task_name,
    unregister_dataset,
    AUX_SPLITS,
    aux_task_name,
    register_aux_tasks,
    unregister_aux_tasks,
    register_summarize_task,
    summarize_task_name,
)
from personalize_t5x.tasks.prompts import VARIANTS  # noqa: F401

register_data_dir()
