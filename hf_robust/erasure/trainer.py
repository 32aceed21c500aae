"""`AdvUnlearnTrainer`: adversarial concept erasure in the text encoder of a diffusers pipeline.

Zhang et al. (NeurIPS 2024), "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion
Models", arXiv 2405.15234. The trained model is the CLIP text encoder (SD 1.x) or both encoders of SDXL; the UNet,
the scheduler and a frozen copy of the original encoder(s) are attributes. One iteration, per concept row:

1. draw a step n < ddim_steps and x_T; the frozen model samples z (n guided DDIM steps on the concept prompt) and the
   retain prompts' latents z_r at the same step; t is the timestep z is at;
2. e_0, e_c = eps(z, t, TE_orig("")), eps(z, t, TE_orig(c)); e_r = eps(z_r, t, TE_orig(r));
3. after `attack_warmup` iterations: k soft tokens attacked on the trained encoder (`soft_prompt_attack`; the target
   is e_c, on the same z unless share_xt=False);
4. loss = MSE(eps(z, t, TE(adv prompt)), e_0 - eta (e_c - e_0)) + gamma MSE(eps(z_r, t, TE(r)), e_r), one backward.

Randomness (n, x_T, retain prompts, attack start) is a function of (seed, iteration, global row index): 2 processes
with batch b each draw what 1 process with batch 2b draws, so DDP reproduces the single-process run.
"""

import copy
import dataclasses
import math
import os
import re

import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from ..sharding import (
    SHARDED_WEIGHT_ENGINES, engine_of, full_tensor, gather_read_in_parent, is_partitioned, load_full_state_dict,
    refuse_before_work, whole_parameters,
)
from .attack import AttackTarget, random_token_embeddings, soft_prompt_attack
from .conditioning import (
    Conditioning, DiffusionComponents, SoftTokens, diffusion_components, encode_prompts, predict_noise, time_ids,
    tokenize_prompts,
)
from .config import PAPER, AdvUnlearnConfig
from .esd import DEFAULT_RETAIN_PROMPTS, RetainPromptSampler, esd_target, partial_ddim_sample, row_mse

ENCODER_NAMES = ("text_encoder", "text_encoder_2")
# Integer tags that keep the seeded streams apart (strings would hash differently in each process).
_STEP, _CONCEPT_NOISE, _RETAIN_NOISE, _ATTACK_START, _RESAMPLE_STEP, _RESAMPLE_NOISE = range(1, 7)


def _generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(tuple(values)) % (2 ** 63))


class TextEncoderPair(nn.Module):
    """The trained model for SDXL: both text encoders, erased together.

    `forward(input_ids_list, soft_tokens=None, image_size=(h, w))` returns (prompt_embeds (batch, 77, D),
    text_embeds (batch, projection_dim)) as `StableDiffusionXLPipeline.encode_prompt` builds them.
    """

    def __init__(self, text_encoder: nn.Module, text_encoder_2: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def get_input_embeddings(self) -> nn.Module:
        """The first encoder's token embedding, for tools that inspect a model's (e.g. `has_sharded_weights`)."""
        return self.text_encoder.get_input_embeddings()

    def forward(self, input_ids_list, soft_tokens=None, image_size=(1024, 1024)):
        conditioning = encode_prompts([self.text_encoder, self.text_encoder_2], input_ids_list, soft_tokens, xl=True,
                                      image_size=image_size)
        return conditioning.prompt_embeds, conditioning.added_cond_kwargs["text_embeds"]


def _frozen_copy(encoder: nn.Module) -> nn.Module:
    """A plain frozen copy of `encoder`, with its whole weights also when DeepSpeed ZeRO-3 (`zero3_init`) loaded it
    partitioned (a deep copy would then hold this rank's partitions only). A collective when partitioned."""
    if not is_partitioned(encoder):
        return copy.deepcopy(encoder).requires_grad_(False).eval()
    with whole_parameters(encoder):
        state = {name: tensor.detach().clone() for name, tensor in encoder.state_dict().items()}
    plain = type(encoder)(encoder.config)  # the constructor outside `from_pretrained` does not partition
    plain.load_state_dict(state)
    return plain.to(encoder.dtype).requires_grad_(False).eval()


def _shard_clip_layers_only(plugin) -> None:
    """FSDP2 units of the text encoder(s): its transformer layers. CLIP lists its `CLIPTextEmbeddings` among the
    layers not to split too, and accelerate then shards the token embedding inside that unit a second time (a crash
    in `fully_shard`); accelerate gives the token embedding a unit of its own anyway."""
    names = plugin.transformer_cls_names_to_wrap or ["CLIPEncoderLayer"]
    plugin.transformer_cls_names_to_wrap = [name for name in names if name != "CLIPTextEmbeddings"]


def _select_trainable(encoder: nn.Module, train_layers, used_layers: int, final_norm_used: bool) -> None:
    """requires_grad only on the chosen encoder layers (and the final layer norm with 'all'); embeddings frozen."""
    encoder.requires_grad_(False)
    count = used_layers if train_layers == "all" else min(train_layers, used_layers)
    layer = re.compile(r"encoder\.layers\.(\d+)\.")
    for name, parameter in encoder.named_parameters():
        match = layer.search(name)
        if match and int(match.group(1)) < count:
            parameter.requires_grad_(True)
        elif "final_layer_norm" in name and train_layers == "all" and final_norm_used:
            parameter.requires_grad_(True)


class AdvUnlearnTrainer(Trainer):
    """`Trainer` whose model is the text encoder of a diffusion pipeline, trained by AdvUnlearn.

    Args:
        pipeline_or_components: a `StableDiffusionPipeline`- or `StableDiffusionXLPipeline`-like pipeline or its
            components dict. Its text encoder(s) are trained in place (the pipeline then uses the erased encoder);
            frozen deep copies give the targets. The UNet is frozen (`requires_grad_(False)`, eval).
        args: `AdvUnlearnConfig`.
        concepts: the concept prompts to erase (one, or several: each row of a batch is one concept, drawn by the
            Trainer's seeded shuffling of a dataset of concept indices).
        retain_prompts: prompts whose predictions must not change; None: `DEFAULT_RETAIN_PROMPTS`.
        **trainer_kwargs: passed to `Trainer` (e.g. `callbacks`, `optimizers`); not `model` or `train_dataset`.

    Trainable: with `train_layers="all"` every encoder layer and the final layer norm, else the first k layers; token
    and position embeddings (and SDXL's text projection) stay frozen. SDXL conditions on the penultimate layer of the
    first encoder, so its last layer and final layer norm are unused there and stay frozen.

    Logs `unlearn_loss`, `retain_loss` and, after the warmup, `attack_loss` (the attack objective at its last iterate)
    and `attack_delta_norm` (the mean L2 distance of the soft tokens from their random start).

    Engines: DDP, DeepSpeed ZeRO-2/3 and FSDP2 give the 1-process result on the same global batch (the attack runs
    through the trained model's own forward and reads the embedding matrix gathered); FSDP1 is refused.

    `save_model` writes `text_encoder/` (and `text_encoder_2/`) in diffusers layout, as safetensors.
    """

    _tag_names = ["hf-robust", "advunlearn", "concept-erasure", "diffusers"]
    _name = "AdvUnlearn"
    _paper = PAPER

    def __init__(self, pipeline_or_components, args: AdvUnlearnConfig | None = None, concepts=None,
                 retain_prompts=None, **trainer_kwargs):
        if args is None:
            args = AdvUnlearnConfig(output_dir="advunlearn_output")
        if not isinstance(args, AdvUnlearnConfig):
            raise TypeError(f"`args` must be an AdvUnlearnConfig, got {type(args).__name__}.")
        for name in ("model", "train_dataset", "model_init"):
            if name in trainer_kwargs:
                raise ValueError(f"`{name}` is built by AdvUnlearnTrainer from the pipeline and `concepts`.")
        components = diffusion_components(pipeline_or_components)
        if isinstance(concepts, str):
            concepts = [concepts]
        if not isinstance(concepts, (list, tuple)) or not concepts or not all(
                isinstance(concept, str) and concept.strip() for concept in concepts):
            raise ValueError(f"`concepts` must be a non-empty list of non-empty strings, got {concepts!r}.")
        self.concepts = list(concepts)
        self.retain_sampler = RetainPromptSampler(
            list(DEFAULT_RETAIN_PROMPTS) if retain_prompts is None else retain_prompts, args.retain_batch, args.seed)
        num_layers = [encoder.config.num_hidden_layers for encoder in components.text_encoders]
        if args.train_layers != "all" and args.train_layers > max(num_layers):
            raise ValueError(f"`train_layers` must be 'all' or at most {max(num_layers)} (the encoder's layers), got "
                             f"{args.train_layers}.")

        from diffusers import DDIMScheduler

        # The sampler is DDIM whatever the pipeline uses; a private instance, so the pipeline's is left alone.
        scheduler = DDIMScheduler.from_config(components.scheduler.config)
        self.unet = components.unet.requires_grad_(False).eval()
        self.original_text_encoders = [_frozen_copy(encoder) for encoder in components.text_encoders]
        for index, encoder in enumerate(components.text_encoders):
            penultimate = components.xl and index == 0
            _select_trainable(encoder, args.train_layers, num_layers[index] - penultimate, not penultimate)
            encoder.train()
        model = components.text_encoders[0] if not components.xl else TextEncoderPair(*components.text_encoders)
        self.xl = components.xl
        self.frozen = DiffusionComponents(unet=self.unet, scheduler=scheduler,
                                          text_encoders=self.original_text_encoders, tokenizers=components.tokenizers,
                                          vae=components.vae, xl=components.xl)
        self.image_size = components.image_size
        # Each concept equally often, in whole optimizer steps: no short last batch (the Trainer cycles epochs up
        # to max_steps, shuffling with the seed).
        rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        repeats = rows_per_step // math.gcd(rows_per_step, len(self.concepts))
        dataset = Dataset.from_dict({"concept_index": list(range(len(self.concepts))) * repeats})
        super().__init__(model=model, args=args, train_dataset=dataset, data_collator=_collate, **trainer_kwargs)
        engine = engine_of(self.accelerator)
        if engine == "fsdp2":
            _shard_clip_layers_only(self.accelerator.state.fsdp_plugin)
        if engine == "fsdp1":
            # FSDP1 keeps the root's parameters in a wrapper that `unwrap_model` strips: the attack's forwards on the
            # unwrapped encoder would read unsharded views that were never gathered. Refused before any work.
            raise refuse_before_work(
                "AdvUnlearnTrainer under FSDP1", "its soft-token attack runs forwards on the unwrapped text encoder, "
                "which FSDP1 does not gather", "FSDP2 (--accelerate_config fsdp2), DeepSpeed ZeRO-2/3 or DDP")
        self.model_accepts_loss_kwargs = False  # compute_loss returns a per-micro-batch mean
        device = self.args.device
        self.unet.to(device)
        for encoder in self.original_text_encoders:
            encoder.to(device)
        self.noise_scheduler = scheduler
        self._micro_step = (-1, 0)
        self._reads_registered = False
        self._log_values: dict[str, list[torch.Tensor]] = {}

    # ------------------------------------------------------------------ helpers

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["concept_index"]

    def _trained_encoders(self, model) -> list[nn.Module]:
        unwrapped = self.accelerator.unwrap_model(model)
        return [unwrapped.text_encoder, unwrapped.text_encoder_2] if self.xl else [unwrapped]

    def _encode(self, encoders_or_model, input_ids, soft_tokens=None) -> Conditioning:
        """Conditioning through the trained model (its wrapped forward, for DDP) or a list of frozen encoders."""
        if isinstance(encoders_or_model, list):
            return encode_prompts(encoders_or_model, input_ids, soft_tokens, xl=self.xl, image_size=self.image_size)
        if not self.xl:
            return encode_prompts([encoders_or_model], input_ids, soft_tokens)
        prompt_embeds, pooled = encoders_or_model(input_ids, soft_tokens, self.image_size)
        ids = time_ids(self.image_size, prompt_embeds.shape[0], prompt_embeds.dtype, prompt_embeds.device)
        return Conditioning(prompt_embeds, {"text_embeds": pooled, "time_ids": ids})

    def _tokenize(self, prompts: list[str]) -> list[torch.Tensor]:
        return [ids.to(self.args.device) for ids in tokenize_prompts(self.frozen, prompts)]

    def _iteration_and_rows(self, batch: int) -> tuple[int, list[int]]:
        """This micro-batch's iteration (optimizer step x accumulation + micro step) and its rows' global indices."""
        step = self.state.global_step
        last_step, micro = self._micro_step
        micro = micro + 1 if last_step == step else 0
        self._micro_step = (step, micro)
        iteration = step * self.args.gradient_accumulation_steps + micro
        first = (iteration * self.accelerator.num_processes + self.accelerator.process_index) * batch
        return iteration, list(range(first, first + batch))

    def _sample(self, concept_cond, concept_uncond, extra_cond, extra_uncond, n_steps, generators):
        """Partial sampling of the concept rows and the retain rows together (one batch); returns (z, z_r, t)."""
        cond = Conditioning.cat([concept_cond] + ([extra_cond] if extra_cond is not None else []))
        uncond = Conditioning.cat([concept_uncond] + ([extra_uncond] if extra_uncond is not None else []))
        latents, timestep = partial_ddim_sample(self.frozen, cond, uncond, n_steps, self.args.guidance_scale,
                                                generators, ddim_steps=self.args.ddim_steps)
        return latents[:len(concept_cond)], latents[len(concept_cond):], timestep

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """L_u + gamma L_r of this micro-batch (means over its rows), with the attack after the warmup."""
        args = self.args
        if not self._reads_registered:  # once the engine has partitioned the weights (ZeRO-3)
            gather_read_in_parent(self.accelerator.unwrap_model(model), "position_embedding")
            self._reads_registered = True
        indices = inputs["concept_index"].tolist()
        batch, seed = len(indices), args.seed
        iteration, rows = self._iteration_and_rows(batch)
        n_steps = int(torch.randint(args.ddim_steps, (1,), generator=_generator(seed, _STEP, iteration)))
        with_retain = args.retain_weight > 0
        retain_prompts = [prompt for row in rows for prompt in self.retain_sampler.draw(row)] if with_retain else []
        concept_ids = self._tokenize([self.concepts[index] for index in indices])
        retain_ids = self._tokenize(retain_prompts) if with_retain else None

        with torch.no_grad():
            originals = self.original_text_encoders
            concept_cond = self._encode(originals, concept_ids)
            empty = self._encode(originals, self._tokenize([""]))
            retain_cond = self._encode(originals, retain_ids) if with_retain else None
            generators = [_generator(seed, _CONCEPT_NOISE, row) for row in rows]
            generators += [_generator(seed, _RETAIN_NOISE, row, j) for row in rows for j in range(args.retain_batch)
                           if with_retain]
            retain_empty = empty.repeat(len(retain_prompts)) if with_retain else None
            latents, retain_latents, timestep = self._sample(concept_cond, empty.repeat(batch), retain_cond,
                                                             retain_empty, n_steps, generators)
            query = Conditioning.cat([empty.repeat(batch), concept_cond] + ([retain_cond] if with_retain else []))
            queried = torch.cat([latents, latents] + ([retain_latents] if with_retain else []))
            e_0, e_c, e_r = predict_noise(self.unet, queried, timestep, query).split(
                [batch, batch, len(retain_prompts)])
            target = esd_target(e_0.float(), e_c.float(), args.eta)

        soft_tokens, adversarial_ids = None, concept_ids
        if model.training and self.state.global_step >= args.attack_warmup:
            adversarial_ids, soft_tokens = self._attack(model, concept_ids, concept_cond, empty.repeat(batch),
                                                        latents, timestep, e_c, iteration, rows)

        input_ids = [torch.cat([adv] + ([retain] if with_retain else []))
                     for adv, retain in zip(adversarial_ids, retain_ids or [None] * len(adversarial_ids))]
        conditioning = self._encode(model, input_ids, soft_tokens)
        all_latents = torch.cat([latents] + ([retain_latents] if with_retain else []))
        prediction = predict_noise(self.unet, all_latents, timestep, conditioning)
        unlearn_loss = row_mse(prediction[:batch], target).mean()
        loss = unlearn_loss
        self._record(model, unlearn_loss=unlearn_loss)
        if with_retain:
            retain_loss = row_mse(prediction[batch:], e_r).mean()
            loss = loss + args.retain_weight * retain_loss
            self._record(model, retain_loss=retain_loss)
        outputs = {"prediction": prediction, "e_0": e_0, "e_c": e_c, "e_r": e_r}
        return (loss, outputs) if return_outputs else loss

    def _attack(self, model, concept_ids, concept_cond, concept_uncond, latents, timestep, e_c, iteration, rows):
        """Soft tokens attacked on the unwrapped trained encoder(s): (adversarial ids, SoftTokens for the rows)."""
        args = self.args
        attacked = DiffusionComponents(unet=self.unet, scheduler=self.noise_scheduler,
                                       text_encoders=self._trained_encoders(model), tokenizers=self.frozen.tokenizers,
                                       vae=self.frozen.vae, xl=self.xl)
        start = random_token_embeddings(attacked, len(rows), args.num_adv_tokens,
                                        [_generator(args.seed, _ATTACK_START, row) for row in rows])
        if args.share_xt:
            target = AttackTarget(latents, timestep, e_c)
        else:
            calls = []

            def target():  # a fresh z_t per evaluation, as the reference
                calls.append(None)
                n_steps = int(torch.randint(args.ddim_steps, (1,),
                                            generator=_generator(args.seed, _RESAMPLE_STEP, iteration, len(calls))))
                with torch.no_grad():
                    generators = [_generator(args.seed, _RESAMPLE_NOISE, row, len(calls)) for row in rows]
                    fresh, _, t = self._sample(concept_cond, concept_uncond, None, None, n_steps, generators)
                    noise = predict_noise(self.unet, fresh, t, concept_cond)
                return AttackTarget(fresh, t, noise)

        # Through the trained model's own forward (the root module, as FSDP2 needs; DeepSpeed's hooks sit inside it).
        unwrapped = self.accelerator.unwrap_model(model)
        result = soft_prompt_attack(attacked, concept_ids, target, args.attack_config(), initial_embeddings=start,
                                    encode=lambda ids, soft: self._encode(unwrapped, ids, soft))
        # How far the soft tokens moved from their random start (per token, both encoders side by side): 0 would
        # mean the attack did nothing.
        moved = torch.cat([end - begin.to(end) for end, begin in zip(result.soft_tokens.embeddings, start)], dim=-1)
        self._record(model, attack_loss=result.final_loss.mean(), attack_delta_norm=moved.norm(dim=-1).mean())
        rows_index = torch.arange(len(rows), device=result.soft_tokens.positions.device)
        soft = SoftTokens(result.soft_tokens.embeddings, result.soft_tokens.positions, rows=rows_index)
        return result.input_ids, soft

    # ------------------------------------------------------------------ logging

    def _record(self, model, **values: torch.Tensor) -> None:
        if model.training:
            for name, value in values.items():
                self._log_values.setdefault(name, []).append(value.detach().float().reshape(()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also get the means of the recorded terms since the last log, over processes."""
        if "loss" in logs and self._log_values:
            names = sorted(self._log_values)
            values = torch.stack([torch.stack(self._log_values[name]).mean().to(self.args.device) for name in names])
            values = self.accelerator.gather(values.unsqueeze(0)).mean(dim=0)
            logs.update(dict(zip(names, values.tolist())))
            self._log_values = {}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ saving

    def erased_components(self) -> DiffusionComponents:
        """The erased model for evaluation outside training (prompt attacks, the card): the UNet, tokenizers and VAE
        with the trained encoder(s), whole on this rank: the encoders themselves unless FSDP2 / ZeRO-3 shards them,
        else frozen copies of the originals holding the gathered trained weights (so each rank can attack its own
        prompts outside the engine's collectives). A collective under those engines: every rank calls it. Attack it
        with `prompt_attack(trainer.erased_components(), prompts, original=trainer.original_text_encoders)`."""
        encoders = self._trained_encoders(self.model_wrapped)
        if engine_of(self.accelerator) in SHARDED_WEIGHT_ENGINES:
            copies = []
            for encoder, original in zip(encoders, self.original_text_encoders):
                plain = copy.deepcopy(original)
                targets = dict(plain.named_parameters())
                for name, parameter in encoder.named_parameters():  # the same order on every rank
                    with full_tensor(parameter) as whole:
                        targets[name].data.copy_(whole)
                copies.append(plain)
            encoders = copies
        return dataclasses.replace(self.frozen, text_encoders=encoders)

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Diffusers layout: `text_encoder/` (and `text_encoder_2/`) with safetensors weights and config."""
        if not self.args.should_save:  # sharded engines gathered `state_dict` collectively; one process writes
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        for name, encoder in zip(ENCODER_NAMES, self._trained_encoders(self.model)):
            own_state = None
            if state_dict is not None:
                prefix = f"{name}." if self.xl else ""
                own_state = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
            encoder.save_pretrained(os.path.join(output_dir, name), state_dict=own_state, safe_serialization=True)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume: load the encoder weights that `_save` wrote into the trained encoder(s)."""
        for name, encoder in zip(ENCODER_NAMES, self._trained_encoders(model if model is not None else self.model)):
            saved = type(encoder).from_pretrained(os.path.join(resume_from_checkpoint, name))
            load_full_state_dict(encoder, saved.state_dict())  # FSDP2: each rank keeps its shard


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {"concept_index": torch.tensor([row["concept_index"] for row in rows], dtype=torch.long)}
