"""Text conditioning of diffusers pipelines, with soft tokens injected into the CLIP token embeddings.

- `diffusion_components(pipeline_or_components)` collects and checks the UNet, scheduler, text encoder(s) and
  tokenizer(s) of a Stable Diffusion 1.x-type pipeline (one CLIP text encoder) or an SDXL pipeline (two).
- `adversarial_layout(tokenizer, prompt_ids, k, position)` makes room for k soft tokens in tokenized prompts.
- `encode_prompts(text_encoders, input_ids_list, soft_tokens)` gives the UNet conditioning exactly as the diffusers
  pipelines do (SD 1.x: the last hidden state; SDXL: `StableDiffusionXLPipeline.encode_prompt`), with the soft tokens
  written over the token embeddings by a forward hook on `get_input_embeddings()`.
- `predict_noise(unet, latents, timesteps, conditioning)` is one UNet call.

Example:

    >>> components = diffusion_components(pipeline)
    >>> ids = tokenize_prompts(components, ["a photo of a church"])
    >>> conditioning = encode_prompts(components.text_encoders, ids, xl=components.xl,
    ...                               image_size=components.image_size)
    >>> noise = predict_noise(components.unet, latents, timestep, conditioning)
"""

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

POSITIONS = ("prefix", "suffix", "replace")


@dataclass
class DiffusionComponents:
    """The parts of a text-to-image pipeline that concept erasure uses.

    Attributes:
        unet: `UNet2DConditionModel`.
        scheduler: a diffusers scheduler (the sampler calls its `set_timesteps`).
        text_encoders: `[CLIPTextModel]` (SD 1.x) or `[CLIPTextModel, CLIPTextModelWithProjection]` (SDXL).
        tokenizers: one CLIP tokenizer per text encoder.
        vae: `AutoencoderKL` or None (not needed for training).
        xl: whether the conditioning follows SDXL (two encoders, pooled text embeddings and size ids).
    """

    unet: nn.Module
    scheduler: Any
    text_encoders: list[nn.Module]
    tokenizers: list[Any]
    vae: nn.Module | None = None
    xl: bool = False

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the pipeline's default image: UNet sample size x VAE scale factor."""
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return height * scale, width * scale


@dataclass
class SoftTokens:
    """k continuous tokens per row, written over the token embeddings of the given positions.

    Attributes:
        embeddings: one Tensor per text encoder, shape (rows, k, hidden_i); any float dtype (cast to the embedding's).
        positions: LongTensor, shape (rows, k). Sequence positions the tokens replace (from `adversarial_layout`).
        rows: LongTensor, shape (rows,), or None. Batch rows of the encoded ids that get the tokens; None: rows
            0..rows-1 (then the ids batch must have exactly `rows` rows).
    """

    embeddings: list[Tensor]
    positions: Tensor
    rows: Tensor | None = None


@dataclass
class Conditioning:
    """What the UNet is conditioned on.

    Attributes:
        prompt_embeds: Tensor, shape (batch, 77, cross_attention_dim). `encoder_hidden_states` of the UNet.
        added_cond_kwargs: SDXL only: {"text_embeds": (batch, projection_dim), "time_ids": (batch, 6)}; else None.
    """

    prompt_embeds: Tensor
    added_cond_kwargs: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def __getitem__(self, rows) -> "Conditioning":
        """The rows `rows` (a slice or an index tensor) of every field."""
        added = None if self.added_cond_kwargs is None else {
            key: value[rows] for key, value in self.added_cond_kwargs.items()}
        return Conditioning(self.prompt_embeds[rows], added)

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch."""
        embeds = torch.cat([item.prompt_embeds for item in items])
        if items[0].added_cond_kwargs is None:
            return Conditioning(embeds)
        keys = items[0].added_cond_kwargs
        return Conditioning(embeds, {key: torch.cat([item.added_cond_kwargs[key] for item in items]) for key in keys})

    def repeat(self, count: int) -> "Conditioning":
        """Every row repeated `count` times (row-major: row 0 x count, row 1 x count, ...)."""
        added = None if self.added_cond_kwargs is None else {
            key: value.repeat_interleave(count, dim=0) for key, value in self.added_cond_kwargs.items()}
        return Conditioning(self.prompt_embeds.repeat_interleave(count, dim=0), added)

    def detach(self) -> "Conditioning":
        added = None if self.added_cond_kwargs is None else {
            key: value.detach() for key, value in self.added_cond_kwargs.items()}
        return Conditioning(self.prompt_embeds.detach(), added)


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP/accelerate wrappers (they keep it in `.module`)."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return module


def _is_clip_text_encoder(module: Any) -> bool:
    config = getattr(module, "config", None)
    return (isinstance(module, nn.Module) and callable(getattr(module, "get_input_embeddings", None))
            and getattr(config, "model_type", None) == "clip_text_model")


def _check_tokenizer(name: str, tokenizer: Any) -> None:
    if tokenizer is None:
        raise ValueError(f"`{name}` is missing: a CLIP tokenizer is required.")
    for attribute in ("bos_token_id", "eos_token_id", "model_max_length"):
        if getattr(tokenizer, attribute, None) is None:
            raise ValueError(f"`{name}` must be a CLIP tokenizer with `{attribute}`, got {type(tokenizer).__name__}.")


def diffusion_components(pipeline_or_components: Any) -> DiffusionComponents:
    """Collect and check the components of a diffusers text-to-image pipeline.

    Args:
        pipeline_or_components: a `StableDiffusionPipeline`-like or `StableDiffusionXLPipeline`-like pipeline (its
            `.components`), or a dict with `unet`, `scheduler`, `text_encoder`, `tokenizer` (and, for SDXL,
            `text_encoder_2`, `tokenizer_2`; optional `vae`). A non-None `text_encoder_2` selects SDXL.

    Returns:
        `DiffusionComponents` referencing (not copying) the given modules.

    Raises:
        TypeError: not a pipeline or a dict.
        ValueError: a required component is missing, or a text encoder is not a CLIP text encoder; the message
            names the component.
    """
    if isinstance(pipeline_or_components, DiffusionComponents):
        return pipeline_or_components
    if isinstance(pipeline_or_components, dict):
        components = pipeline_or_components
    elif isinstance(getattr(pipeline_or_components, "components", None), dict):
        components = pipeline_or_components.components
    else:
        raise TypeError("`pipeline_or_components` must be a diffusers pipeline or a dict of its components, got "
                        f"{type(pipeline_or_components).__name__}.")
    for name in ("unet", "scheduler"):
        if components.get(name) is None:
            raise ValueError(f"`{name}` is missing from `pipeline_or_components`.")
    xl = components.get("text_encoder_2") is not None
    names = [("text_encoder", "tokenizer")] + ([("text_encoder_2", "tokenizer_2")] if xl else [])
    encoders, tokenizers = [], []
    for encoder_name, tokenizer_name in names:
        encoder = components.get(encoder_name)
        if encoder is None:
            raise ValueError(f"`{encoder_name}` is missing from `pipeline_or_components`.")
        if not _is_clip_text_encoder(encoder):
            raise ValueError(f"`{encoder_name}` must be a CLIP text encoder (CLIPTextModel or "
                             f"CLIPTextModelWithProjection), got {type(encoder).__name__}.")
        _check_tokenizer(tokenizer_name, components.get(tokenizer_name))
        encoders.append(encoder)
        tokenizers.append(components[tokenizer_name])
    if xl and not hasattr(encoders[1], "text_projection"):
        raise ValueError("`text_encoder_2` must be a CLIPTextModelWithProjection (SDXL pools its projection), got "
                         f"{type(encoders[1]).__name__}.")
    return DiffusionComponents(unet=components["unet"], scheduler=components["scheduler"], text_encoders=encoders,
                               tokenizers=tokenizers, vae=components.get("vae"), xl=xl)


def tokenize_prompts(components: DiffusionComponents, prompts: list[str]) -> list[Tensor]:
    """Token ids of `prompts` for each tokenizer, as the pipelines make them.

    Returns:
        One LongTensor per tokenizer, shape (len(prompts), model_max_length): padded to the maximum length and
        truncated (the last slot is then the end-of-text token).
    """
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(text, str) for text in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of strings, got {prompts!r}.")
    return [tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt").input_ids for tokenizer in components.tokenizers]


def adversarial_layout(tokenizer: Any, prompt_ids: Tensor, k: int, position: str = "prefix") -> tuple[Tensor, Tensor]:
    """Token ids with k slots for soft tokens, and the slots' positions.

    The concept length L of a row is counted in tokens: the index of its first end-of-text (EOT) token minus 1 (the
    start-of-text token SOT sits at 0). Layouts (sequence length unchanged):

    - "prefix": [SOT, s_1..s_k, concept (L), EOT, pad...]; everything after SOT moves right by k, the last k slots
      are dropped.
    - "suffix": [SOT, concept (L), s_1..s_k, EOT, pad...]; the tail moves right by k, the last k slots are dropped
      (for a prompt that fills the sequence, the soft tokens take the k slots before the final EOT).
    - "replace": the soft tokens take the places of the first k concept tokens (k <= L is required).

    If the shift pushes the EOT token out (a prompt within k tokens of the maximum length), the last slot becomes
    EOT, so the pooled output of CLIP (taken at the first EOT, or at the argmax id for legacy configs) stays at the
    end of the text. The id written at the soft-token slots is the SOT id: it is never EOT and is below EOT in CLIP
    vocabularies, so neither pooling rule can pick a slot; the hook replaces its embedding anyway.

    Args:
        tokenizer: the CLIP tokenizer that made `prompt_ids`.
        prompt_ids: LongTensor, shape (batch, seq), from `tokenize_prompts` (SOT first, an EOT in every row).
        k: number of soft tokens, >= 1.
        position: "prefix", "suffix" or "replace".

    Returns:
        (input_ids, positions): LongTensor (batch, seq) and LongTensor (batch, k).

    Raises:
        ValueError: bad `k` or `position`, ids without SOT/EOT, or "replace" with k larger than a concept.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`num_adv_tokens` (k) must be an integer >= 1, got {k!r}.")
    if position not in POSITIONS:
        raise ValueError(f"`adv_position` must be one of {list(POSITIONS)}, got {position!r}.")
    if not isinstance(prompt_ids, Tensor) or prompt_ids.dim() != 2 or prompt_ids.dtype.is_floating_point:
        raise ValueError("`prompt_ids` must be an integer tensor of shape (batch, seq).")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    device, prompt_ids = prompt_ids.device, prompt_ids.cpu()  # a small integer layout: built on the CPU
    batch, length = prompt_ids.shape
    is_eos = prompt_ids == eos
    if not bool((prompt_ids[:, 0] == bos).all()) or not bool(is_eos[:, 1:].any(dim=1).all()):
        raise ValueError("`prompt_ids` must start with the start-of-text token and hold an end-of-text token in "
                         "every row (use `tokenize_prompts`).")
    concept_lengths = is_eos[:, 1:].float().argmax(dim=1)  # first EOT index - 1
    if k > length - 2:
        raise ValueError(f"`num_adv_tokens` (k) must be <= {length - 2} for sequences of {length} tokens, got {k}.")
    offsets = torch.arange(k).unsqueeze(0)
    if position == "replace":
        if bool((concept_lengths < k).any()):
            raise ValueError(f"adv_position='replace' needs `num_adv_tokens` (k={k}) <= the token length of every "
                             f"concept; got lengths {concept_lengths.tolist()}.")
        positions = 1 + offsets.expand(batch, k)
        input_ids = prompt_ids.clone()
    else:
        # A suffix of a prompt that fills the sequence moves left so that the EOT slot remains after it.
        starts = torch.ones(batch, dtype=torch.long) if position == "prefix" else (1 + concept_lengths).clamp(
            max=length - 1 - k)
        positions = starts.unsqueeze(1) + offsets
        input_ids = torch.empty_like(prompt_ids)
        for row in range(batch):
            start = int(starts[row])
            input_ids[row] = torch.cat([prompt_ids[row, :start], prompt_ids.new_full((k,), bos),
                                        prompt_ids[row, start:]])[:length]
        lost_eos = ~(input_ids[:, 1:] == eos).any(dim=1)
        input_ids[lost_eos, -1] = eos
    input_ids[torch.arange(batch).unsqueeze(1), positions] = bos
    return input_ids.to(device), positions.to(device)


@contextlib.contextmanager
def _injected(encoder: nn.Module, embeddings: Tensor | None, soft_tokens: SoftTokens | None) -> Iterator[None]:
    """While active, the encoder's token-embedding output at the soft-token slots is `embeddings`."""
    if soft_tokens is None:
        yield
        return
    module = _unwrap(encoder).get_input_embeddings()

    def hook(_, __, output):
        rows = soft_tokens.rows
        if rows is None:
            if output.shape[0] != soft_tokens.positions.shape[0]:
                raise ValueError(f"`soft_tokens` has {soft_tokens.positions.shape[0]} rows but the ids have "
                                 f"{output.shape[0]}; set `soft_tokens.rows`.")
            rows = torch.arange(output.shape[0], device=output.device)
        rows = rows.to(output.device).unsqueeze(1).expand_as(soft_tokens.positions)
        index = (rows, soft_tokens.positions.to(output.device))
        # Out of place, so the values stay differentiable (gradients reach the soft tokens, not the embedding table).
        return output.index_put(index, embeddings.to(device=output.device, dtype=output.dtype))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def time_ids(image_size: tuple[int, int], batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """SDXL micro-conditioning (original size, crop top-left (0, 0), target size), as
    `StableDiffusionXLPipeline._get_add_time_ids` with the default arguments. Shape (batch, 6)."""
    if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
            isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in image_size)):
        raise ValueError(f"`image_size` must be (height, width) in pixels, two integers > 0, got {image_size!r}.")
    height, width = image_size
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device).repeat(batch, 1)


def encode_prompts(
    text_encoders: Sequence[nn.Module],
    input_ids_list: Sequence[Tensor],
    soft_tokens: SoftTokens | None = None,
    *,
    xl: bool = False,
    image_size: tuple[int, int] | None = None,
) -> Conditioning:
    """UNet conditioning of token ids, optionally with soft tokens.

    SD 1.x: `prompt_embeds` is the last hidden state of the encoder. SDXL follows
    `StableDiffusionXLPipeline.encode_prompt` (no clip skip): the penultimate hidden states of both encoders,
    concatenated on the feature axis; `text_embeds` is the pooled projection of the second encoder; `time_ids` come
    from `image_size`. Soft tokens replace the token embeddings at their positions through a forward hook on each
    encoder's `get_input_embeddings()` (position embeddings are added afterwards, as for ordinary tokens), so with
    soft tokens equal to the embeddings of the ids at those positions the output equals the plain path.

    Args:
        text_encoders: the encoders (possibly DDP-wrapped; the hook goes on the wrapped module's embeddings).
        input_ids_list: one LongTensor (batch, seq) per encoder.
        soft_tokens: `SoftTokens` with one embedding tensor per encoder, or None.
        xl: SDXL conditioning (needs two encoders and `image_size`).
        image_size: (height, width) in pixels for the SDXL `time_ids`.

    Returns:
        `Conditioning` (prompt_embeds (batch, seq, D), added_cond_kwargs or None). Gradients flow to the trained
        encoder parameters and to the soft tokens.
    """
    if len(text_encoders) != len(input_ids_list) or len(text_encoders) != (2 if xl else 1):
        raise ValueError(f"`text_encoders` and `input_ids_list` must hold {2 if xl else 1} item(s) each (xl={xl}), "
                         f"got {len(text_encoders)} and {len(input_ids_list)}.")
    if soft_tokens is not None and len(soft_tokens.embeddings) != len(text_encoders):
        raise ValueError(f"`soft_tokens.embeddings` must hold one tensor per text encoder ({len(text_encoders)}), "
                         f"got {len(soft_tokens.embeddings)}.")
    if xl and image_size is None:
        raise ValueError("`image_size` (height, width) is required for SDXL conditioning (the time ids).")
    hidden, pooled = [], None
    for index, (encoder, input_ids) in enumerate(zip(text_encoders, input_ids_list)):
        embeddings = None if soft_tokens is None else soft_tokens.embeddings[index]
        device = _unwrap(encoder).get_input_embeddings().weight.device
        with _injected(encoder, embeddings, soft_tokens):
            outputs = encoder(input_ids.to(device), output_hidden_states=xl, return_dict=True)
        if not xl:
            hidden.append(outputs.last_hidden_state)
            continue
        hidden.append(outputs.hidden_states[-2])
        if pooled is None and outputs[0].ndim == 2:  # the projection output of CLIPTextModelWithProjection
            pooled = outputs[0]
    prompt_embeds = torch.cat(hidden, dim=-1)
    if not xl:
        return Conditioning(prompt_embeds)
    if pooled is None:
        raise ValueError("SDXL conditioning needs a CLIPTextModelWithProjection among `text_encoders`.")
    ids = time_ids(image_size, prompt_embeds.shape[0], prompt_embeds.dtype, prompt_embeds.device)
    return Conditioning(prompt_embeds, {"text_embeds": pooled, "time_ids": ids})


def predict_noise(unet: nn.Module, latents: Tensor, timesteps: Tensor | int, conditioning: Conditioning) -> Tensor:
    """The UNet's noise prediction.

    Args:
        unet: `UNet2DConditionModel`.
        latents: Tensor, shape (batch, channels, height, width), already scaled by the scheduler if it needs that.
        timesteps: a scalar (int or 0-d tensor) for every row, or a Tensor of shape (batch,).
        conditioning: `Conditioning` with `batch` rows.

    Returns:
        Tensor, shape (batch, channels, height, width).
    """
    if len(conditioning) != latents.shape[0]:
        raise ValueError(f"`conditioning` has {len(conditioning)} rows but `latents` has {latents.shape[0]}.")
    dtype = unet.dtype
    added = None if conditioning.added_cond_kwargs is None else {
        key: value.to(dtype) for key, value in conditioning.added_cond_kwargs.items()}
    return unet(latents.to(dtype), timesteps, encoder_hidden_states=conditioning.prompt_embeds.to(dtype),
                added_cond_kwargs=added, return_dict=False)[0]
