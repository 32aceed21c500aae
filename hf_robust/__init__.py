"""hf-robust: make Hugging Face models robust, and attack them to measure it."""

__version__ = "0.1.0"
