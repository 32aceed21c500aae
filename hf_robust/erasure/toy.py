"""A toy concept-erasure task: tiny diffusers components taught that "church" prompts change the noise prediction.

A random tiny UNet barely reads its text conditioning (its noise prediction moves by ~1e-4 of its size between
prompts), so there is no concept to erase. `toy_erasure_components` teaches one: the UNet and the text encoder of
`hf_robust.testing.tiny_sd_components()` are trained (seeded, CPU, ~150 Adam steps, 10-30 s) so that under a prompt
of class k the UNet predicts its own initial unconditional prediction plus a fixed smooth pattern P_k, and under the
empty prompt the initial prediction itself:

    eps(z_t, t, TE(p)) ~ eps_init(z_t, t, TE_init("")) + P_class(p),   P_class("") = 0,

on z_t = noisy smooth random latents at uniform timesteps. Classes: the concept "church" (several phrasings) and nine
ordinary objects. Plain denoising training on class-conditional synthetic latents would need thousands of steps before
the conditioning matters (the unconditional part is learnt first, and a class is read off z_t itself); distilling the
conditional shift directly makes the prompt matter within seconds, while the taught prompts of one class give nearly
the same prediction and other classes a different one. Phrasings never taught are not reliably recognised (a tiny
model learns the taught prompts, not the word).

`prompt_effect` measures how much a prompt changes the prediction; the prompt lists split the toy world into what
unlearning sees (`TOY_CONCEPT`, `TOY_RETAIN_PROMPTS`) and what only evaluation sees (`TOY_CONCEPT_PROMPTS`,
`TOY_HELD_OUT_RETAIN_PROMPTS`).
"""

import copy
import functools
import numbers

import torch
import torch.nn.functional as F

# The classes the toy model is taught, each with the prompts it sees during teaching. Words of the tiny tokenizer.
TOY_CLASSES = {
    "church": ("church", "a church", "a photo of a church", "a church in the snow", "an image of a church",
               "a painting of a church"),
    "cat": ("a photo of a cat", "a cat", "a cute cat on a sofa"),
    "dog": ("a photo of a dog", "a dog", "a dog in the park"),
    "house": ("a photo of a house", "a painting of a house"),
    "truck": ("a photo of a garbage truck", "a garbage truck"),
    "tree": ("a photo of a tree", "a drawing of a tree on a hill"),
    "ball": ("a photo of a golf ball", "a golf ball"),
    "parachute": ("a photo of a parachute", "a parachute"),
    "tench": ("a photo of a tench", "a tench fish"),
    "robot": ("a photo of a robot", "a friendly robot"),
}
TOY_CONCEPT = "church"
"""The concept unlearning erases (the trainer's `concepts=[TOY_CONCEPT]`)."""
TOY_CONCEPT_PROMPTS = ("a photo of a church", "a church in the snow", "an image of a church",
                       "a painting of a church")
"""Prompts of the concept that unlearning never sees: what the prompt attacks are run on."""
TOY_RETAIN_PROMPTS = ("a photo of a cat", "a photo of a dog", "a photo of a house", "a photo of a garbage truck",
                      "a photo of a tree", "a photo of a golf ball")
"""The retain prompts of unlearning (its regulariser)."""
TOY_HELD_OUT_RETAIN_PROMPTS = ("a cute cat on a sofa", "a dog in the park", "a painting of a house",
                               "a photo of a parachute", "a tench fish", "a friendly robot")
"""Prompts the toy model knows that unlearning never sees: other phrasings, and classes outside the retain set."""

# Teaching: Adam steps, learning rate, batch, the patterns' standard deviation, the share of empty prompts.
TOY_TEACHING = {"steps": 150, "learning_rate": 5e-3, "batch_size": 16, "pattern_std": 0.5, "empty_fraction": 0.1}


def _check_integer(name: str, value, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _smooth(generator: torch.Generator, count: int, size: int) -> torch.Tensor:
    """Smooth random latents (count, 4, size, size): 4x4 Gaussian noise, bilinearly upsampled."""
    coarse = torch.randn(count, 4, 4, 4, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=4)
def _taught_components(seed: int, steps: int) -> dict:
    from .conditioning import diffusion_components, tokenize_prompts
    from ..testing import tiny_sd_components

    components = tiny_sd_components(seed=seed)
    parts = diffusion_components(components)
    unet, encoder, scheduler = components["unet"], components["text_encoder"], components["scheduler"]
    prompts = [prompt for class_prompts in TOY_CLASSES.values() for prompt in class_prompts] + [""]
    labels = torch.tensor([index for index, class_prompts in enumerate(TOY_CLASSES.values())
                           for _ in class_prompts] + [len(TOY_CLASSES)])
    input_ids = tokenize_prompts(parts, prompts)[0]
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    patterns = _smooth(generator, len(TOY_CLASSES), size)
    patterns = TOY_TEACHING["pattern_std"] * patterns / patterns.std(dim=(1, 2, 3), keepdim=True)
    shifts = torch.cat([patterns, torch.zeros_like(patterns[:1])])[labels]  # the empty prompt: no shift
    initial = copy.deepcopy(unet).requires_grad_(False)
    with torch.no_grad():
        empty_embeds = encoder(input_ids[-1:]).last_hidden_state
    batch, empty = TOY_TEACHING["batch_size"], len(prompts) - 1
    optimizer = torch.optim.Adam([*unet.parameters(), *encoder.parameters()], lr=TOY_TEACHING["learning_rate"])
    unet.train(), encoder.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            rows = torch.randint(empty, (batch,), generator=generator)
            rows[torch.rand(batch, generator=generator) < TOY_TEACHING["empty_fraction"]] = empty
            timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=generator)
            noise = torch.randn(batch, 4, size, size, generator=generator)
            latents = scheduler.add_noise(_smooth(generator, batch, size), noise, timesteps)
            with torch.no_grad():
                target = initial(latents, timesteps, encoder_hidden_states=empty_embeds.expand(batch, -1, -1)).sample
            embeds = encoder(input_ids).last_hidden_state[rows]  # every prompt once, then the batch's rows
            prediction = unet(latents, timesteps, encoder_hidden_states=embeds).sample
            loss = F.mse_loss(prediction, target + shifts[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for module in (unet, encoder):
        module.eval().requires_grad_(True)
        for parameter in module.parameters():
            parameter.grad = None
    return components


def toy_erasure_components(seed: int = 0, steps: int | None = None) -> dict:
    """Tiny SD components that know the concept "church" (module docstring), for `StableDiffusionPipeline(**...)`.

    Teaching runs once per (seed, steps) in a process (cached); every call returns fresh copies of the modules (and a
    fresh scheduler), so trainers may change them in place; the tokenizer is shared. Deterministic: the same arguments
    give bit-identical weights (the global RNG is untouched).

    Args:
        seed: seeds the tiny components and the teaching.
        steps: teaching steps; None: `TOY_TEACHING["steps"]`.

    Returns:
        The dict of `hf_robust.testing.tiny_sd_components` with the taught UNet and text encoder (eval mode).
    """
    _check_integer("seed", seed, 0)
    steps = TOY_TEACHING["steps"] if steps is None else steps
    _check_integer("steps", steps, 0)
    taught = _taught_components(int(seed), int(steps))
    # Modules are copied; the tokenizer is shared (a deep-copied CLIPTokenizer decodes wrongly) and the scheduler
    # rebuilt from its config.
    components = {name: copy.deepcopy(value) if isinstance(value, torch.nn.Module) else value
                  for name, value in taught.items()}
    components["scheduler"] = type(taught["scheduler"]).from_config(taught["scheduler"].config)
    return components


def prompt_effect(pipeline_or_components, prompt: str, config=None) -> float:
    """How much `prompt` changes the noise prediction: mean_j MSE(e_p, e_0) / mean_j mean(e_p^2).

    At the evaluation points (z_j, t_j) of `hf_robust.erasure.leakage` (partial DDIM sampling of the model on the
    prompt), e_p = eps(z_j, t_j, TE(prompt)) and e_0 = eps(z_j, t_j, TE("")). 0: the prompt changes nothing; the
    random tiny UNet gives ~1e-4, the toy model ~0.1-0.3 for its prompts.

    Args:
        pipeline_or_components: a diffusers pipeline or its components dict.
        prompt: a non-empty prompt.
        config: `PromptAttackConfig` (its n_timesteps, ddim_steps, guidance_scale and seed); None: the defaults.
    """
    from .leakage import evaluation_points

    points = evaluation_points(pipeline_or_components, prompt, config)
    return float(points.scale / points.concept_noise.pow(2).mean())
