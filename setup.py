"""personalize-t5x: teach T5 models to write in a person's voice (JAX / T5X / SeqIO)."""
import setuptools

setuptools.setup(
    name="personalize-t5x",
    version="0.1.0",
    description=(
        "Multistage, multitask personalized text generation (retrieve, rank, "
        "summarize, synthesize, generate) on a T5X-style JAX stack."
    ),
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["personalize_t5x", "personalize_t5x.*", "tasks", "tasks.*"]),
    package_data={"personalize_t5x": ["demo/*.jsonl.gz", "demo/*.md"]},
    include_package_data=True,
    # The exact, tested versions live in requirements.lock; these are the floors.
    install_requires=[
        "jax>=0.10", "flax>=0.12", "optax>=0.2.8", "orbax-checkpoint>=0.12",
        "seqio>=0.0.20", "tensorflow>=2.21", "tensorflow-text>=2.21",
        "gin-config>=0.5", "sentencepiece>=0.2", "rank-bm25>=0.2.2",
        "rouge-score>=0.1.2", "sacrebleu>=2.4", "apache-beam>=2.60",
        "tqdm", "matplotlib", "safetensors", "tokenizers", "msgpack", "tensorstore", "scipy",
    ],
    entry_points={"console_scripts": ["personalize-t5x=personalize_t5x.cli:main"]},
)
