"""Invariants of the GCG attack: monotone loss, only the suffix changes, exact chat rendering, model untouched,
success = independent greedy decode, PEFT models, bad inputs."""

import copy

import pytest
import torch

from hf_robust.attacks import GCGConfig, GCGResult, TokenSearchConfig, gcg_attack
from hf_robust.testing import tiny_causal_lm

PROMPT = "Tell me about France"
TARGET = " the weather"
FAST = dict(n_iters=4, topk=32, n_candidates=32, batch_size=64, suffix_init="! ! ! ! ! !")


@pytest.fixture(scope="module")
def llama():
    return tiny_causal_lm("llama", seed=0)


@pytest.fixture(scope="module")
def attacked(llama):
    model, tokenizer = llama
    return gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**FAST))


def clean_parts(tokenizer, prompt=PROMPT, suffix=FAST["suffix_init"], target=TARGET):
    """Token ids of the pieces, rendered independently of gcg.py: text before the suffix, suffix, after, target."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{prompt} {suffix}"}], add_generation_prompt=True, tokenize=False
    )
    before, after = rendered.split(f"{prompt} {suffix}")
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    return encode(before + prompt + " "), encode(suffix), encode(after), encode(target)


def greedy(model, prompt_ids, n):
    """Independent greedy decode by repeated full forwards: LongTensor (n,)."""
    ids = prompt_ids.clone()
    with torch.no_grad():
        for _ in range(n):
            next_id = model(input_ids=ids.unsqueeze(0)).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1)])
    return ids[prompt_ids.numel() :]


def test_defaults_map_onto_token_search():
    config = GCGConfig()
    assert isinstance(config, TokenSearchConfig)
    assert (config.n_iters, config.topk, config.n_candidates, config.n_top_candidates, config.n_flip) == (
        250, 256, 512, 0, 1
    )
    assert config.suffix_init == " ".join(["!"] * 20)


def test_loss_decreases_and_history_monotone(attacked):
    assert isinstance(attacked, GCGResult)
    assert len(attacked.history) == attacked.iterations + 1 == FAST["n_iters"] + 1
    assert all(b <= a for a, b in zip(attacked.history, attacked.history[1:]))
    assert attacked.loss == attacked.history[-1] < attacked.history[0]
    assert attacked.seconds > 0


def test_only_suffix_changes_and_round_trips(llama, attacked):
    _, tokenizer = llama
    before, suffix, after, target = clean_parts(tokenizer)
    ids = attacked.ids
    assert ids.shape == (len(before) + len(suffix) + len(after) + len(target),)
    assert attacked.suffix_slice == slice(len(before), len(before) + len(suffix))
    assert attacked.target_slice == slice(ids.numel() - len(target), ids.numel())
    initial = torch.tensor(before + suffix + after + target)
    changed = (ids != initial).nonzero().flatten()
    assert changed.numel() > 0
    assert all(attacked.suffix_slice.start <= i < attacked.suffix_slice.stop for i in changed.tolist())
    # The prompt part is the clean rendered prompt; the suffix string re-tokenises to the suffix ids.
    assert ids[: len(before)].tolist() == before
    assert ids[attacked.target_slice].tolist() == target
    assert tokenizer(attacked.suffix, add_special_tokens=False).input_ids == ids[attacked.suffix_slice].tolist()


def test_model_untouched(llama):
    model, tokenizer = llama
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    model.model.layers[0].eval()  # a mixed state, restored module by module
    flags = {name: module.training for name, module in model.named_modules()}
    try:
        gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**{**FAST, "n_iters": 2}))
        assert {name: module.training for name, module in model.named_modules()} == flags
    finally:
        model.eval()
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p, before[name]), name


def test_success_matches_independent_greedy_decode(llama, attacked):
    model, tokenizer = llama
    n = attacked.target_slice.stop - attacked.target_slice.start
    decoded = greedy(model, attacked.ids[: attacked.target_slice.start], n)
    assert attacked.success == torch.equal(decoded, attacked.ids[attacked.target_slice])
    # A target the model already produces: success must be True (and agree with the decode).
    before, suffix, after, _ = clean_parts(tokenizer)
    own = greedy(model, torch.tensor(before + suffix + after), 3)
    target = tokenizer.decode(own.tolist())
    # Seeded and deterministic on CPU: this continuation re-tokenises to itself, so the check below is meaningful.
    assert tokenizer(target, add_special_tokens=False).input_ids == own.tolist()
    result = gcg_attack(model, tokenizer, PROMPT, target, GCGConfig(**{**FAST, "n_iters": 0}))
    assert result.success is True
    assert result.history == [result.loss]


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_other_architectures(arch):
    model, tokenizer = tiny_causal_lm(arch, seed=0)
    result = gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**{**FAST, "n_iters": 2}))
    assert all(b <= a for a, b in zip(result.history, result.history[1:]))
    assert tokenizer(result.suffix, add_special_tokens=False).input_ids == result.ids[result.suffix_slice].tolist()


def test_plain_text_without_chat_template(llama):
    model, tokenizer = llama
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    result = gcg_attack(model, plain, PROMPT, TARGET, GCGConfig(**{**FAST, "n_iters": 1}))
    before = plain(PROMPT + " ", add_special_tokens=False).input_ids
    target = plain(TARGET, add_special_tokens=False).input_ids
    assert result.ids[: len(before)].tolist() == before
    assert result.suffix_slice.start == len(before) and result.suffix_slice.stop == result.target_slice.start
    assert result.ids[result.target_slice].tolist() == target


def test_peft_lora_model():
    import peft
    base, tokenizer = tiny_causal_lm("llama", seed=1)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, lora)
    model.eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**FAST))
    assert all(b <= a for a, b in zip(result.history, result.history[1:]))
    assert result.loss < result.history[0]
    n = result.target_slice.stop - result.target_slice.start
    decoded = greedy(model, result.ids[: result.target_slice.start], n)
    assert result.success == torch.equal(decoded, result.ids[result.target_slice])
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(suffix_init=""), "suffix_init"),
        (dict(suffix_init="   "), "suffix_init"),
        (dict(suffix_init=3), "suffix_init"),
        (dict(n_flip=0), "n_flip"),
        (dict(topk=0), "topk"),
        (dict(n_top_candidates=600), "n_top_candidates"),
        (dict(n_iters=-1), "n_iters"),
    ],
)
def test_config_errors(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        GCGConfig(**kwargs)


def test_argument_errors(llama):
    model, tokenizer = llama
    config = GCGConfig(**{**FAST, "n_iters": 0})
    with pytest.raises(TypeError, match="`config`"):
        gcg_attack(model, tokenizer, PROMPT, TARGET, TokenSearchConfig())
    with pytest.raises(TypeError, match="`model`"):
        gcg_attack("gpt2", tokenizer, PROMPT, TARGET, config)
    with pytest.raises(TypeError, match="`tokenizer`"):
        gcg_attack(model, "tok", PROMPT, TARGET, config)
    with pytest.raises(TypeError, match="`prompt`"):
        gcg_attack(model, tokenizer, ["hi"], TARGET, config)
    with pytest.raises(TypeError, match="`target`"):
        gcg_attack(model, tokenizer, PROMPT, 5, config)
    with pytest.raises(ValueError, match="`prompt`"):
        gcg_attack(model, tokenizer, "", TARGET, config)
    with pytest.raises(ValueError, match="`target`"):
        gcg_attack(model, tokenizer, PROMPT, "", config)
    with pytest.raises(ValueError, match="`prompt`"):
        gcg_attack(model, tokenizer, "x <<hf_robust_gcg_suffix>>", TARGET, config)
    dropping = copy.deepcopy(tokenizer)
    dropping.chat_template = "{{ 'no user text' }}"
    with pytest.raises(ValueError, match="chat_template"):
        gcg_attack(model, dropping, PROMPT, TARGET, config)
