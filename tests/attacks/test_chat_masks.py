"""user_turn_mask (hf_robust.attacks.chat_masks): bad input; what it marks is tested through the embedding attack in
test_continuous.py (test_user_turn_restricts_to_user_content)."""

import pytest

from hf_robust.attacks import user_turn_mask
from hf_robust.testing import tiny_causal_lm

CONVERSATIONS = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend"}]]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def lm(request):
    model, tokenizer = tiny_causal_lm(request.param, seed=0)
    return model.eval(), tokenizer


def test_user_turn_mask_bad_inputs(lm):
    _, tokenizer = lm
    with pytest.raises(ValueError, match="`conversations`"):
        user_turn_mask(tokenizer, [])
    with pytest.raises(ValueError, match="`conversations`"):
        user_turn_mask(tokenizer, [[]])
    with pytest.raises(ValueError, match="`conversations`"):
        user_turn_mask(tokenizer, [["hello"]])
    with pytest.raises(ValueError, match="string message contents"):
        user_turn_mask(tokenizer, [[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]])
    with pytest.raises(TypeError, match="`tokenizer`"):
        user_turn_mask(object(), CONVERSATIONS)
