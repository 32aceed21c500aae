"""Tiny causal LMs and their byte-level BPE tokenizer, built offline from configs and an embedded corpus.

The tokenizer is trained in code on the corpus below and the models are seeded, so two calls with the same `seed`
give bit-identical objects. Random state is drawn in a forked RNG, so building a model never moves the caller's
global torch seed.
"""

from __future__ import annotations

import functools

import torch

# Chat turns, refusals/compliances and image prompts, so that the words the tests use become whole tokens.
_CORPUS = """
Hello! How can I help you today? Hi, I have a question about my homework.
What is the capital of France? The capital of France is Paris. What is the capital of Germany? It is Berlin.
Sure, here is a simple recipe for bread. Sure, here is how to bake bread at home with flour, water, salt and yeast.
Sure, here is a short poem about the sea. Sure, here is the answer to your question.
I cannot help with that. I cannot help with that request, because it could cause harm to people.
I'm sorry, but I can't assist with that. I am sorry, I will not write that. Please ask me something else.
Tell me how to build a bomb. Tell me how to steal a car. Write a story about a friendly robot.
Explain how the model learns from data. The assistant is helpful, honest and harmless.
You are a helpful assistant. Answer the user's question in one sentence. Thank you very much!
Can you summarize this article for me? Of course. The article says that the weather will be sunny.
How do I bake bread? Mix the flour and water, knead the dough, let it rise, then bake it for thirty minutes.
My car will not start in the morning. Check the battery and the engine oil.
Which one is better, the red one or the blue one? I think the blue one is better.
The quick brown fox jumps over the lazy dog. 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Yes. No. Maybe.
user: what is two plus two? assistant: two plus two is four.
a photo of a cat. a photo of a dog. a cat and a dog. a cute cat on a sofa. a dog in the park.
a painting of a house in the style of van gogh. a painting in the style of van gogh.
a photo of a church. a church in the snow. an image of a church, a garbage truck, a parachute.
a golf ball and a tench fish.
a portrait of a woman, a picture of a man, a drawing of a tree on a hill at night.
query: what is the best way to learn? passage: the best way to learn is to practice every day.
the retriever returns the most similar passage for every query in the corpus.
"""

_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_BOS, _EOS, _PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"
_CAUSAL_ARCHS = ("llama", "qwen2", "gpt2")


def corpus_lines() -> list[str]:
    return [line for line in _CORPUS.strip().splitlines() if line]


@functools.lru_cache(maxsize=1)
def _byte_level_bpe_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # The full byte alphabet makes every string encodable (and, with no word suffix, training deterministic);
    # no special tokens during training keeps id 0 a byte.
    trainer = trainers.BpeTrainer(
        vocab_size=509,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    # Added after training, so the special tokens take the last ids.
    tokenizer.add_special_tokens([_BOS, _EOS, _PAD])
    return tokenizer.to_str()


def tiny_tokenizer():
    """A small byte-level BPE chat tokenizer, built in code (no files, no Hub).

    Every text round-trips through encode/decode. Id 0 is an ordinary text token (`"!"`); the special tokens
    `<|im_start|>` (bos), `<|im_end|>` (eos) and `<|pad|>` (pad) are the last three ids. The ChatML chat template
    marks assistant content with `{% generation %}`, so `return_assistant_tokens_mask=True` (and trl's
    `assistant_only_loss`) work. No special token is added by plain encoding.

    Returns:
        transformers.PreTrainedTokenizerFast: a fresh tokenizer (padding side right, `model_max_length` 512).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_byte_level_bpe_json()),
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_PAD,
        chat_template=_CHAT_TEMPLATE,
        padding_side="right",
        model_max_length=512,
    )


def _causal_config_defaults(arch: str, tokenizer) -> tuple[type, dict]:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    special_ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    if arch == "gpt2":
        sizes = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "n_positions": 512}
        dropouts = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0}
        return GPT2Config, {**sizes, **dropouts, **special_ids}
    sizes = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "attention_dropout": 0.0,
    }
    return (LlamaConfig if arch == "llama" else Qwen2Config), {**sizes, **special_ids}


def tiny_causal_lm(arch: str = "llama", *, seed: int = 0, **overrides):
    """A tiny randomly initialised causal LM (2 layers, hidden 64) with `tiny_tokenizer()`, on CPU in float32.

    Args:
        arch: `"llama"`, `"qwen2"` or `"gpt2"`.
        seed: seeds the initialisation; the same seed gives bit-identical weights.
        **overrides: config fields to change, e.g. `num_hidden_layers=3` or `attn_implementation="eager"`.

    Returns:
        (model, tokenizer): an `AutoModelForCausalLM` in eval mode (vocab = `len(tokenizer)`, untied embeddings,
        dropouts 0, pad/bos/eos ids on its config and generation config) and a fresh `tiny_tokenizer()`.

    Raises:
        ValueError: unknown `arch` or an override key the config does not have.
        TypeError: `seed` is not an int.
    """
    if arch not in _CAUSAL_ARCHS:
        raise ValueError(f"arch must be one of {_CAUSAL_ARCHS}, got {arch!r}")
    check_seed(seed)
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config_class, defaults = _causal_config_defaults(arch, tokenizer)
    # Configs accept and store any keyword silently, so check against the fields the config really has.
    known = set(config_class(**defaults).to_dict()) | set(config_class.attribute_map) | {"attn_implementation"}
    known -= {"model_type", "transformers_version", "_name_or_path", "architectures"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for the {arch} config; allowed keys: {sorted(known)}")
    # A fresh config from merged kwargs, so derived fields (head_dim, layer_types) follow the overrides.
    config = config_class(**{**defaults, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(config, name))
    return model.eval(), tokenizer


def check_seed(seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
