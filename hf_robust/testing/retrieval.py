"""A tiny sentence-transformers retriever (BERT + mean pooling), built offline with a WordPiece vocabulary."""

from __future__ import annotations

import functools
import json
import os
import tempfile

import torch

from .language import check_seed, corpus_lines

_SIMILARITIES = ("cosine", "dot")


@functools.lru_cache(maxsize=1)
def _wordpiece_vocab_json() -> str:
    import string
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    # Every corpus word whole, most frequent first, plus single characters so any other word still encodes.
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for line in corpus_lines()
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters
    tokens += ["##" + character for character in characters]
    tokens += sorted(counts, key=lambda word: (-counts[word], word))
    return json.dumps({token: index for index, token in enumerate(dict.fromkeys(tokens))})


def tiny_sentence_transformer(*, seed: int = 0, similarity: str = "cosine", prompts: dict[str, str] | None = None):
    """A tiny SentenceTransformer: 2-layer BERT (hidden 32) with a WordPiece tokenizer built in code, mean pooling.

    Args:
        seed: seeds the initialisation; the same seed gives bit-identical weights.
        similarity: `"cosine"` (embeddings are L2-normalised by a `Normalize` module) or `"dot"` (no normalisation).
        prompts: named prompts passed to `SentenceTransformer`, e.g. `{"query": "query: ", "passage": "passage: "}`,
            so that `encode(..., prompt_name="query")` works. sentence-transformers 6 adds blank `"query"` and
            `"document"` prompts where missing, and `encode_document` prefers `"document"` over `"passage"`.

    Returns:
        SentenceTransformer on CPU; `encode(texts)` gives shape `(len(texts), 32)`.

    Raises:
        ValueError: `similarity` is not `"cosine"` or `"dot"`.
        TypeError: `prompts` is not a dict of str to str, or `seed` is not an int.
    """
    check_seed(seed)
    if similarity not in _SIMILARITIES:
        raise ValueError(f"similarity must be one of {_SIMILARITIES}, got {similarity!r}")
    if prompts is not None and not (
        isinstance(prompts, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())
    ):
        raise TypeError(f"prompts must be None or a dict of str to str, got {prompts!r}")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer(vocab=json.loads(_wordpiece_vocab_json()), model_max_length=128)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # With its (unused) pooler, so that reloading below initialises nothing at random.
        bert = BertModel(config)
    # sentence-transformers' Transformer module only loads from a folder; the folder is not needed afterwards.
    with tempfile.TemporaryDirectory(prefix="hf_robust_tiny_st_") as folder:
        # Written by hand, not `bert.save_pretrained`: under an initialised process group transformers writes on
        # rank 0 only, and every process needs its own private folder.
        from safetensors.torch import save_file

        config.save_pretrained(folder)
        save_file({name: tensor.contiguous() for name, tensor in bert.state_dict().items()},
                  os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(folder)
        transformer = Transformer(folder, max_seq_length=128)
    modules = [transformer, Pooling(config.hidden_size, pooling_mode="mean")]
    if similarity == "cosine":
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu", prompts=prompts, similarity_fn_name=similarity)
