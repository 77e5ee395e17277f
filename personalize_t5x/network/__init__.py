"""The T5 1.1 network (layers, architecture) and readers of its weights in T5X and Hugging Face formats.

Below both the trainer and the pipeline: the trainer trains it, the pipeline's GTR encoder
and abstractive summarizer run its encoder or decoder.
"""
