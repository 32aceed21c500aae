"""GCG as in Zou et al. / nanoGCG: ids that the rendered text really produces, the best-ever suffix returned, prefix
cache == full forward, early stop on success, a behaviour broken within its budget, universal GCG, the model
untouched, PEFT and other architectures, bad inputs."""

import copy

import pytest
import torch

from hf_robust.attacks import GCGConfig, GCGResult, TokenSearchConfig, gcg_attack, universal_gcg_attack
from hf_robust.attacks.gcg_layout import layout_suffix, render_around_suffix
from hf_robust.testing import tiny_causal_lm

PROMPT = "Tell me about France"
TARGET = " the weather"
FAST = dict(n_iters=4, topk=32, search_width=32, batch_size=64, suffix_init="! ! ! ! ! !", stop_on_success=False)


@pytest.fixture(scope="module")
def llama():
    return tiny_causal_lm("llama", seed=0)


@pytest.fixture(scope="module")
def attacked(llama):
    model, tokenizer = llama
    return gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**FAST))


def rendered_prompt(tokenizer, message):
    """The chat text the model answers, rendered independently of gcg.py."""
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                         tokenize=False)


def greedy(model, prompt_ids, n):
    """Independent greedy decode by repeated full forwards: list of n ids."""
    ids = torch.tensor(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            next_id = model(input_ids=ids.unsqueeze(0)).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1)])
    return ids[len(prompt_ids):].tolist()


def test_defaults_are_nanogcg_and_map_onto_the_batch_step():
    config = GCGConfig()
    assert (config.n_iters, config.search_width, config.topk, config.n_replace, config.buffer_size) == (
        250, 512, 256, 1, 0)
    assert config.suffix_init == " ".join(["!"] * 20)
    search = config.search_config()
    assert isinstance(search, TokenSearchConfig)
    assert (search.step, search.n_candidates, search.n_top_candidates, search.n_grad) == ("batch", 512, 0, 1)


def test_ids_are_what_the_rendered_text_tokenizes_to(llama, attacked):
    _, tokenizer = llama
    assert isinstance(attacked, GCGResult)
    assert attacked.message == PROMPT + attacked.suffix
    text = rendered_prompt(tokenizer, attacked.message)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    full_ids = tokenizer(text + TARGET, add_special_tokens=False).input_ids
    assert attacked.ids.tolist() == full_ids
    assert attacked.ids[: attacked.target_slice.start].tolist() == prompt_ids
    target_ids = attacked.ids[attacked.target_slice].tolist()
    assert tokenizer.decode(target_ids) == TARGET
    # Only the suffix moved; the prompt and template tokens are the clean rendering's.
    clean = tokenizer(rendered_prompt(tokenizer, PROMPT + " " + FAST["suffix_init"]) + TARGET,
                      add_special_tokens=False).input_ids
    assert attacked.ids[: attacked.suffix_slice.start].tolist() == clean[: attacked.suffix_slice.start]
    assert attacked.ids[attacked.suffix_slice.stop:].tolist() == clean[attacked.suffix_slice.stop:]
    assert attacked.ids[attacked.suffix_slice].tolist() != clean[attacked.suffix_slice]


def test_returned_suffix_is_the_best_ever(attacked):
    assert len(attacked.history) == attacked.iterations + 1 == FAST["n_iters"] + 1
    assert attacked.loss == min(attacked.history) < attacked.history[0]


@pytest.mark.real
def test_smollm2_space_merges_into_the_suffix():
    """The issue's case: 'France ' tokenized alone ends with 'Ġ', but in the text the space belongs to 'Ġ!'."""
    from hf_robust.testing import load_smollm2

    model, tokenizer = load_smollm2()
    prompt = "What is the capital of France?"
    before, _ = render_around_suffix(tokenizer, prompt + " ")
    assert tokenizer.convert_ids_to_tokens(tokenizer(before, add_special_tokens=False).input_ids)[-1] == "Ġ"
    layout, suffix_ids = layout_suffix(tokenizer, prompt, " ! ! !", "Sure")
    assert tokenizer.convert_ids_to_tokens(suffix_ids) == ["Ġ!", "Ġ!", "Ġ!"]
    assert tokenizer.convert_ids_to_tokens(layout.prefix_ids)[-1] == "?"
    result = gcg_attack(model, tokenizer, prompt, "Sure, here is",
                        GCGConfig(n_iters=1, search_width=16, topk=16, suffix_init="! ! !", stop_on_success=False))
    text = rendered_prompt(tokenizer, result.message)
    assert tokenizer(text + "Sure, here is", add_special_tokens=False).input_ids == result.ids.tolist()


def test_prefix_cache_gives_the_full_forward_losses(llama):
    model, tokenizer = llama
    cached = gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**{**FAST, "use_prefix_cache": True}))
    full = gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**{**FAST, "use_prefix_cache": False}))
    assert cached.prefix_cache and not full.prefix_cache
    assert cached.ids.tolist() == full.ids.tolist()
    assert cached.history == pytest.approx(full.history, abs=1e-4)


def test_buffer_of_one_never_moves_to_a_worse_suffix(llama):
    model, tokenizer = llama
    result = gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**{**FAST, "buffer_size": 1, "n_replace": 2}))
    assert all(b <= a for a, b in zip(result.history, result.history[1:]))


def test_breaks_a_behaviour_within_budget_and_stops(llama):
    model, tokenizer = llama
    config = GCGConfig(n_iters=20, topk=64, search_width=64, suffix_init="! ! ! ! ! !")
    result = gcg_attack(model, tokenizer, PROMPT, "Sure", config)
    assert result.success and result.stopped_early and result.iterations < 20
    # Independent check: greedy decoding of the re-tokenized rendered text gives the target.
    prompt_ids = tokenizer(rendered_prompt(tokenizer, result.message), add_special_tokens=False).input_ids
    target_ids = tokenizer("Sure", add_special_tokens=False).input_ids
    assert greedy(model, prompt_ids, len(target_ids)) == target_ids


def test_success_is_false_when_greedy_decoding_differs(llama, attacked):
    model, tokenizer = llama
    prompt_ids = attacked.ids[: attacked.target_slice.start].tolist()
    target_ids = attacked.ids[attacked.target_slice].tolist()
    assert attacked.success == (greedy(model, prompt_ids, len(target_ids)) == target_ids)


def test_universal_loss_is_the_mean_over_behaviours(llama):
    model, tokenizer = llama
    behaviours = [{"prompt": PROMPT, "target": TARGET}, {"prompt": "Say something nice", "target": "Sure"}]
    result = universal_gcg_attack(model, tokenizer, behaviours, GCGConfig(**FAST))
    assert result.loss == pytest.approx(sum(result.losses) / 2, abs=1e-5)
    assert result.loss == min(result.history)
    # Each behaviour's loss and success, recomputed from the rendered text alone.
    for row, loss, success in zip(behaviours, result.losses, result.successes):
        prompt_ids = tokenizer(rendered_prompt(tokenizer, row["prompt"] + result.suffix),
                               add_special_tokens=False).input_ids
        target_ids = tokenizer(row["target"], add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + target_ids])).logits[0, len(prompt_ids) - 1 : -1]
        assert torch.nn.functional.cross_entropy(logits, torch.tensor(target_ids)).item() == pytest.approx(loss,
                                                                                                       abs=1e-4)
        assert success == (greedy(model, prompt_ids, len(target_ids)) == target_ids)
    assert result.success_rate == sum(result.successes) / 2


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


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_other_architectures(arch):
    model, tokenizer = tiny_causal_lm(arch, seed=0)
    result = gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**{**FAST, "n_iters": 2}))
    assert result.prefix_cache
    assert result.loss == min(result.history)
    text = rendered_prompt(tokenizer, result.message) if tokenizer.chat_template else result.message
    assert tokenizer(text + TARGET, add_special_tokens=False).input_ids == result.ids.tolist()


def test_plain_text_without_chat_template(llama):
    model, tokenizer = llama
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    result = gcg_attack(model, plain, PROMPT, TARGET, GCGConfig(**{**FAST, "n_iters": 1}))
    assert result.ids.tolist() == plain(result.message + TARGET, add_special_tokens=False).input_ids
    assert result.ids[: result.suffix_slice.start].tolist() == plain(PROMPT, add_special_tokens=False).input_ids


def test_peft_lora_model():
    import peft

    base, tokenizer = tiny_causal_lm("llama", seed=1)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, lora)
    model.eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = gcg_attack(model, tokenizer, PROMPT, TARGET, GCGConfig(**FAST))
    assert result.prefix_cache and result.loss < result.history[0]
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(suffix_init=""), "suffix_init"),
        (dict(suffix_init="   "), "suffix_init"),
        (dict(suffix_init=3), "suffix_init"),
        (dict(search_width=0), "search_width"),
        (dict(n_replace=0), "n_replace"),
        (dict(buffer_size=-1), "buffer_size"),
        (dict(topk=0), "topk"),
        (dict(n_iters=-1), "n_iters"),
        (dict(use_prefix_cache="yes"), "use_prefix_cache"),
        (dict(stop_on_success=1), "stop_on_success"),
        (dict(time_limit=0), "time_limit"),
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
    with pytest.raises(TypeError, match="`behaviours`"):
        universal_gcg_attack(model, tokenizer, "a prompt", config)
    with pytest.raises(ValueError, match="`behaviours`"):
        universal_gcg_attack(model, tokenizer, [], config)
    with pytest.raises(ValueError, match=r"`behaviours\[1\]`"):
        universal_gcg_attack(model, tokenizer, [{"prompt": PROMPT, "target": TARGET}, {"prompt": PROMPT}], config)
