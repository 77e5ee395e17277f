"""personalize-t5x: personalized long-form generation with T5 on JAX, T5X-style."""

__version__ = "0.1.0"
