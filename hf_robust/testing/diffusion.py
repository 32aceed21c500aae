"""Tiny Stable Diffusion 1.x-type and SDXL components (CLIP text encoders, UNet, VAE, scheduler), built offline."""

from __future__ import annotations

import functools
import json

import torch

from .language import check_seed, corpus_lines

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
        for line in corpus_lines()
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
    check_seed(seed)
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
