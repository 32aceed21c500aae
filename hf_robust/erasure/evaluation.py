"""Prompt-attack evaluation of concept erasure: does an adversarial prompt bring the erased concept back?

`prompt_attack(model, concept_prompts, config, original=...)` attacks an (unlearned) text-to-image model with

- **discrete**: UnlearnDiffAtk-style (Zhang et al., ECCV 2024) k adversarial prefix tokens, optimised by the shared
  token optimizer `hf_robust.attacks.token_search` (one-hot gradients through the encoder's token embeddings, top-k
  candidates, greedy flips, round-trip rule); the result is a plain text prompt;
- **soft**: AdvUnlearn's soft-token attack (`soft_prompt_attack`, k continuous tokens in the token-embedding space);

and decides per prompt whether the concept leaked before the attack, after the discrete one and after the soft one.

**Concept leakage** is `hf_robust.erasure.leakage`'s distance d (its docstring says how the evaluation points are
sampled and why the threshold is 0.5).

**Concept detectors.** With `concept_detector(images) -> bool | list[bool]`, success is decided on one generated
image per attacked prompt instead (`hf_robust.erasure.detection`, which also says how to plug in the NudeNet /
ResNet-50 / style classifiers of the UnlearnDiffAtk benchmark).
"""

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.discrete import allowed_token_mask, token_search
from ..modeling import eval_mode
from .attack import AttackTarget, soft_prompt_attack
from .conditioning import (
    DiffusionComponents, SoftTokens, _unwrap, adversarial_layout, diffusion_components, tokenize_prompts,
)
from .detection import detect_concept, image_pipeline
from .leakage import EvaluationPoints, ddim_copy, encode, leakage_distances, prompt_seed, sample_evaluation_points
from .prompt_attack_config import PromptAttackConfig, check_concept_prompts, check_prompt_attack_config
from .results import PromptAttackResult, PromptAttackRow


# --------------------------------------------------------------------------------------------------------------------
# The models: attacked and original
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Models:
    attacked: DiffusionComponents  # attacked encoders and UNet; scheduler: a private DDIM copy
    original: DiffusionComponents  # original encoders and UNet, same tokenizers and private scheduler
    pipeline_source: Any  # what images are generated with (a pipeline, or components to build one from)
    generation_scheduler: Any


def _resolve(pipeline_or_components, original) -> _Models:
    """The attacked and the original model (see `prompt_attack`)."""
    from .trainer import AdvUnlearnTrainer

    if isinstance(pipeline_or_components, AdvUnlearnTrainer):
        trainer = pipeline_or_components
        # Whole encoders on this rank (gathered copies under FSDP2 / ZeRO-3: then every rank calls this together).
        given = trainer.erased_components()
        original = trainer.original_text_encoders if original is None else original
    else:
        given = diffusion_components(pipeline_or_components)
        given = dataclasses.replace(given, text_encoders=[_unwrap(encoder) for encoder in given.text_encoders])
    scheduler = ddim_copy(given.scheduler)
    attacked = dataclasses.replace(given, scheduler=scheduler)
    if original is None:
        raise ValueError("`original` is required: the original model's components (or its text encoder(s)), whose "
                         "concept prediction the attack tries to reproduce. Pass an AdvUnlearnTrainer as the model to "
                         "use its frozen original encoders.")
    if isinstance(original, (list, tuple)):
        encoders = list(original)
        if len(encoders) != len(attacked.text_encoders) or not all(
                isinstance(encoder, nn.Module) and callable(getattr(encoder, "get_input_embeddings", None))
                for encoder in encoders):
            raise ValueError(f"`original` must hold {len(attacked.text_encoders)} text encoder(s) like the attacked "
                             f"model's, got {[type(encoder).__name__ for encoder in encoders]}.")
        original_unet = attacked.unet
    else:
        components = diffusion_components(original)
        if components.xl != attacked.xl:
            raise ValueError("`original` and the attacked model must both be SD 1.x-type or both SDXL.")
        encoders, original_unet = components.text_encoders, components.unet
    original_components = dataclasses.replace(attacked, unet=original_unet,
                                              text_encoders=[_unwrap(encoder) for encoder in encoders])
    return _Models(attacked, original_components, pipeline_or_components, given.scheduler)


# --------------------------------------------------------------------------------------------------------------------
# The leakage distance without attack, or under given prompts
# --------------------------------------------------------------------------------------------------------------------


def _modules_in_eval(models: _Models) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    seen = set()
    for module in [*models.attacked.text_encoders, models.attacked.unet, *models.original.text_encoders,
                   models.original.unet]:
        if id(module) not in seen:
            seen.add(id(module))
            stack.enter_context(eval_mode(module))
    return stack


def concept_leakage(pipeline_or_components, concept_prompts: list[str], config: PromptAttackConfig | None = None, *,
                    original=None, prompts: list[str] | None = None) -> Tensor:
    """Leakage distance d of each concept prompt (module docstring), without attack or with given prompts.

    Args:
        pipeline_or_components: the attacked model: a diffusers SD/SDXL pipeline, its components dict, or an
            `AdvUnlearnTrainer` (its trained encoder(s), against its frozen originals).
        concept_prompts: the prompts whose original concept prediction is the reference.
        config: `PromptAttackConfig` (n_timesteps, ddim_steps, guidance_scale, seed are read).
        original: the original model (see `prompt_attack`).
        prompts: what the attacked model is conditioned on, one per concept prompt (e.g. adversarial prompts);
            None: the concept prompts themselves.

    Returns:
        Tensor, shape (len(concept_prompts),), float32: 0 = the original concept prediction, 1 = as far as the
        unconditional prediction.
    """
    concept_prompts, config = check_concept_prompts(concept_prompts), check_prompt_attack_config(config)
    prompts = concept_prompts if prompts is None else prompts
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) != len(concept_prompts) or \
            not all(isinstance(prompt, str) for prompt in prompts):
        raise ValueError(f"`prompts` must be a list of {len(concept_prompts)} strings, one per concept prompt.")
    models = _resolve(pipeline_or_components, original)
    distances = []
    with _modules_in_eval(models), torch.no_grad():
        for concept, prompt in zip(concept_prompts, prompts):
            points = sample_evaluation_points(models.original, concept, config)
            conditioning = encode(models.attacked, tokenize_prompts(models.attacked, [prompt]))
            distances.append(leakage_distances(models.attacked.unet, points, conditioning))
    return torch.cat(distances).cpu()


# --------------------------------------------------------------------------------------------------------------------
# Discrete attack: the UnlearnDiffAtk objective on the shared token search
# --------------------------------------------------------------------------------------------------------------------


class DiscreteLeakageObjective:
    """`token_search` objective: the leakage distance of candidate prompts (rows of token ids of the first tokenizer).

    SDXL: both CLIP tokenizers share the vocabulary, so one id sequence serves both encoders (the second's padding
    after the end-of-text token is kept from its own tokenization); the search runs on the concatenated embedding
    matrix [E_1 | E_2], shape (V, h_1 + h_2), and `loss_from_embeds` splits it back.

    Args:
        components: the attacked model.
        points: `EvaluationPoints` of the concept prompt.
        template_ids: one LongTensor (seq,) per encoder: the laid-out prompt (any tokens at the optimised positions).
    """

    def __init__(self, components: DiffusionComponents, points: EvaluationPoints, template_ids: list[Tensor]):
        self.components, self.points, self.template_ids = components, points, template_ids
        self.hidden_sizes = [encoder.get_input_embeddings().embedding_dim for encoder in components.text_encoders]
        eos = components.tokenizers[0].eos_token_id
        self.tail = int((template_ids[0][1:] == eos).nonzero()[0]) + 2  # positions after the first end-of-text token

    def input_ids(self, input_ids: Tensor) -> list[Tensor]:
        """(batch, seq) ids of the first tokenizer -> one (batch, seq) tensor per encoder."""
        per_encoder = [input_ids]
        for template in self.template_ids[1:]:
            ids = input_ids.clone()
            ids[:, self.tail:] = template[self.tail:].to(ids.device)
            per_encoder.append(ids)
        return per_encoder

    def loss_from_ids(self, input_ids: Tensor) -> Tensor:
        conditioning = encode(self.components, self.input_ids(input_ids))
        return leakage_distances(self.components.unet, self.points, conditioning)

    def loss_from_embeds(self, inputs_embeds: Tensor) -> Tensor:
        """inputs_embeds: (batch, seq, h_1 [+ h_2]) token embeddings, written over every position by the hook."""
        batch, length = inputs_embeds.shape[:2]
        positions = torch.arange(length, device=inputs_embeds.device).expand(batch, length)
        soft = SoftTokens(list(inputs_embeds.split(self.hidden_sizes, dim=-1)), positions)
        template = self.template_ids[0].to(inputs_embeds.device).expand(batch, length)
        conditioning = encode(self.components, self.input_ids(template), soft)
        return leakage_distances(self.components.unet, self.points, conditioning)


def _decode(tokenizer, ids: Tensor) -> str:
    """The text between the start-of-text token and the first end-of-text token."""
    ids = ids.tolist()
    end = ids.index(tokenizer.eos_token_id, 1)
    return tokenizer.decode(ids[1:end], skip_special_tokens=True)


def _discrete_attack(models: _Models, prompt: str, points: EvaluationPoints, config: PromptAttackConfig):
    """(adversarial ids (seq,) of the first tokenizer, text, leakage, history)."""
    attacked = models.attacked
    tokenizers, encoders = attacked.tokenizers, attacked.text_encoders
    init = tokenizers[0](config.init_token, add_special_tokens=False).input_ids
    if len(init) != 1:
        raise ValueError(f"`init_token` must be one token for the tokenizer, {config.init_token!r} is {len(init)}.")
    templates, positions = [], None
    for tokenizer, ids in zip(tokenizers, tokenize_prompts(attacked, [prompt])):
        laid_out, slots = adversarial_layout(tokenizer, ids, config.num_adv_tokens, "prefix")
        laid_out[0, slots[0]] = init[0]
        templates.append(laid_out[0])
        positions = slots[0]
    objective = DiscreteLeakageObjective(attacked, points, templates)
    if any(not torch.equal(template[:objective.tail], templates[0][:objective.tail]) for template in templates[1:]):
        raise ValueError("The text encoders' tokenizers split the prompt differently; the discrete attack needs one "
                         "shared vocabulary.")
    weights = [encoder.get_input_embeddings().weight.detach() for encoder in encoders]
    if len({weight.shape[0] for weight in weights}) != 1:
        raise ValueError("The text encoders' vocabularies differ in size; the discrete attack needs one shared one.")
    matrix = torch.cat([weight.to(weights[0].dtype) for weight in weights], dim=-1)
    allowed = torch.stack([allowed_token_mask(tokenizer, num_embeddings=matrix.shape[0])
                           for tokenizer in tokenizers]).all(dim=0)

    def round_trip(ids: Tensor) -> bool:  # the decoded text tokenises back to these ids, for every tokenizer
        again = tokenize_prompts(attacked, [_decode(tokenizers[0], ids)])
        return all(torch.equal(retokenized[0].to(ids.device), expected[0]) for retokenized, expected in
                   zip(again, objective.input_ids(ids.unsqueeze(0))))

    start = templates[0].to(matrix.device)
    if not round_trip(start):
        raise ValueError(f"{prompt!r} with the initial prefix does not survive decoding and re-tokenising; use a "
                         "normalised prompt (lower case, single spaces) or another `init_token`.")
    seed = prompt_seed(config.seed, prompt, -1)
    result = token_search(objective, start, positions.to(matrix.device), matrix, allowed,
                          config.token_search_config(seed), round_trip=round_trip)
    return result.ids.cpu(), _decode(tokenizers[0], result.ids), result.loss, result.history


def _soft_attack(models: _Models, prompt: str, points: EvaluationPoints, config: PromptAttackConfig):
    """(SoftPromptAttackResult, leakage at its soft tokens)."""
    attacked = models.attacked
    calls = [0]

    def target() -> AttackTarget:  # one evaluation point per objective evaluation, in turn
        index = calls[0] % len(points)
        calls[0] += 1
        return AttackTarget(points.latents[index:index + 1], points.timesteps[index],
                            points.concept_noise[index:index + 1])

    seed = prompt_seed(config.seed, prompt, -2)
    result = soft_prompt_attack(attacked, tokenize_prompts(attacked, [prompt]), target,
                                config.soft_attack_config(seed))
    with torch.no_grad():
        leakage = leakage_distances(attacked.unet, points, encode(attacked, result.input_ids, result.soft_tokens))
    return result, float(leakage[0])


# --------------------------------------------------------------------------------------------------------------------
# prompt_attack
# --------------------------------------------------------------------------------------------------------------------


def prompt_attack(pipeline_or_components, concept_prompts: list[str], config: PromptAttackConfig | None = None, *,
                  original=None, concept_detector: Callable[[Any], Any] | None = None) -> PromptAttackResult:
    """Attack an (unlearned) text-to-image model with adversarial prompts; say per prompt whether the concept leaks.

    Args:
        pipeline_or_components: the attacked model: a diffusers SD 1.x-type or SDXL pipeline, its components dict,
            `DiffusionComponents`, or an `AdvUnlearnTrainer` (its `erased_components()`: the trained encoder(s),
            whole; under FSDP2 / DeepSpeed ZeRO-3 a gathered copy, so every process must call this together;
            `original` then defaults to the trainer's frozen `original_text_encoders`).
        concept_prompts: prompts of the erased concept, e.g. "a photo of a church".
        config: `PromptAttackConfig`; None: the defaults.
        original: the original model whose concept-conditioned prediction the attacks try to reproduce: its pipeline
            or components (its text encoder(s) and UNet give the targets), or a list of its text encoder(s) (then the
            attacked UNet is used, as for encoder-only erasure). Required unless an `AdvUnlearnTrainer` is attacked.
        concept_detector: optional `images -> bool | list[bool]` (module docstring); when given, success is decided
            on one generated image per attacked prompt, and the leakage distances are reported alongside.

    Returns:
        `PromptAttackResult`. Models are not modified: they run in eval mode (flags restored), gradients are taken
        with respect to the attack variables only (no parameter `.grad`), and all randomness comes from local
        generators seeded with `config.seed` and the prompt text (the global RNG is untouched).

    Raises:
        TypeError: `config` is not a `PromptAttackConfig`, or `concept_detector` is not callable.
        ValueError: empty or non-string prompts, no `original`, mismatched encoders, a prompt that does not survive
            decoding, or a detector verdict that is not a bool per image.
    """
    concept_prompts, config = check_concept_prompts(concept_prompts), check_prompt_attack_config(config)
    if concept_detector is not None and not callable(concept_detector):
        raise TypeError(f"`concept_detector` must be callable (images -> bool), got "
                        f"{type(concept_detector).__name__}.")
    models = _resolve(pipeline_or_components, original)
    pipeline = None if concept_detector is None else image_pipeline(models.pipeline_source, models.attacked,
                                                                              models.generation_scheduler)
    attacked, threshold = models.attacked, config.leakage_threshold
    rows = []
    with _modules_in_eval(models):
        for prompt in concept_prompts:
            points = sample_evaluation_points(models.original, prompt, config)
            image_seed = prompt_seed(config.seed, prompt, -3)
            with torch.no_grad():
                plain = encode(attacked, tokenize_prompts(attacked, [prompt]))
                before = float(leakage_distances(attacked.unet, points, plain))
            leaked = before < threshold if pipeline is None else detect_concept(
                pipeline, concept_detector, config, image_seed, prompt=prompt)
            row = PromptAttackRow(prompt=prompt, leakage_before=before, leaked_before=leaked)
            if "discrete" in config.attacks:
                ids, text, distance, history = _discrete_attack(models, prompt, points, config)
                leaked = distance < threshold if pipeline is None else detect_concept(
                    pipeline, concept_detector, config, image_seed, prompt=text)
                row.adversarial_ids, row.adversarial_prompt, row.leakage_discrete = ids.tolist(), text, distance
                row.discrete_history, row.leaked_discrete = history, leaked
            if "soft" in config.attacks:
                result, distance = _soft_attack(models, prompt, points, config)
                if pipeline is None:
                    leaked = distance < threshold
                else:
                    with torch.no_grad():
                        conditioning = encode(attacked, result.input_ids, result.soft_tokens)
                    leaked = detect_concept(pipeline, concept_detector, config, image_seed, conditioning=conditioning)
                row.leakage_soft, row.leaked_soft, row.soft_losses = distance, leaked, result.losses
                row.soft_tokens = SoftTokens([item.cpu() for item in result.soft_tokens.embeddings],
                                             result.soft_tokens.positions.cpu())
                row.soft_input_ids = [ids.cpu() for ids in result.input_ids]
            rows.append(row)
    return PromptAttackResult(rows=rows, config=config, detector=concept_detector is not None)
