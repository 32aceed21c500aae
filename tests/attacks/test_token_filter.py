"""Tests for hf_robust.attacks.token_filter: which tokens a search may use, built once per tokenizer."""

import pytest
import torch
from transformers import BertTokenizer

from hf_robust.attacks import TokenFilter, allowed_token_mask
from hf_robust.testing import tiny_tokenizer


def test_allowed_token_mask_byte_level():
    tokenizer = tiny_tokenizer()
    mask = allowed_token_mask(tokenizer, num_embeddings=len(tokenizer) + 8)
    assert mask.dtype == torch.bool and mask.shape == (len(tokenizer) + 8,)
    assert not mask[len(tokenizer):].any()
    assert not mask[tokenizer.all_special_ids].any()
    decoded = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
    non_ascii = [i for i, text in decoded.items() if not text.isascii()]
    non_printable = [i for i, text in decoded.items() if text.isascii() and not text.isprintable()]
    assert non_ascii and non_printable
    assert not mask[non_ascii].any() and not mask[non_printable].any()
    assert mask[tokenizer.convert_tokens_to_ids("Ġthe")]
    loose = allowed_token_mask(tokenizer, ascii_only=False, printable_only=False, exclude_special=False)
    assert loose.shape == (len(tokenizer),) and loose[non_ascii].any() and loose[tokenizer.all_special_ids].all()
    assert torch.equal(TokenFilter().mask(tokenizer, len(tokenizer) + 8), mask)


def test_allowed_token_mask_unused_and_bert(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "hello", "world", "##s", "é"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False, strip_accents=False)
    mask = allowed_token_mask(tokenizer)
    allowed = {tokenizer.convert_ids_to_tokens(i) for i in mask.nonzero().flatten().tolist()}
    assert allowed == {"hello", "world", "##s"}
    assert "[unused0]" in {
        tokenizer.convert_ids_to_tokens(i) for i in allowed_token_mask(tokenizer, exclude_unused=False).nonzero()
        .flatten().tolist()
    }


def test_token_filter_and_mask_errors():
    with pytest.raises(ValueError, match="ascii_only"):
        TokenFilter(ascii_only="yes")
    with pytest.raises(TypeError, match="tokenizer"):
        allowed_token_mask(object())
    tokenizer = tiny_tokenizer()
    with pytest.raises(TypeError, match="printable_only"):
        allowed_token_mask(tokenizer, printable_only=None)
    with pytest.raises(ValueError, match="num_embeddings"):
        allowed_token_mask(tokenizer, num_embeddings=0)


def test_allowed_token_mask_is_built_once_per_tokenizer():
    tokenizer = tiny_tokenizer()
    decode, calls = tokenizer.decode, []
    tokenizer.decode = lambda *args, **kwargs: calls.append(1) or decode(*args, **kwargs)
    first = allowed_token_mask(tokenizer, num_embeddings=len(tokenizer) + 2)
    decoded = len(calls)
    assert decoded >= len(tokenizer) - 3
    first[:] = False  # a copy: the cache is untouched
    second = allowed_token_mask(tokenizer, num_embeddings=len(tokenizer) + 2)
    assert len(calls) == decoded and second.any()
    assert torch.equal(second, allowed_token_mask(tiny_tokenizer(), num_embeddings=len(tokenizer) + 2))
    allowed_token_mask(tokenizer, num_embeddings=len(tokenizer) + 2, ascii_only=False)  # other settings: decoded
    assert len(calls) > decoded
    tokenizer.add_tokens(["zzqx"])  # a longer vocabulary: decoded again, the new token allowed
    calls.clear()
    grown = allowed_token_mask(tokenizer)
    assert len(calls) >= len(tokenizer) - 4 and grown.shape == (len(tokenizer),) and grown[-1]
