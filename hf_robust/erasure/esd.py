"""ESD (erased stable diffusion) pieces: partial DDIM sampling, the negative-guidance target, retain prompts.

Gandikota et al. (ICCV 2023) erase a concept c by training towards e_0 - eta (e_c - e_0) at latents the frozen model
itself produces for c; AdvUnlearn (Zhang et al., NeurIPS 2024) keeps that loss and adds a retain regulariser on
unrelated prompts. The latent z_t comes from `partial_ddim_sample` and the UNet is queried at the timestep z_t is
at (the reference ESD code queries a later timestep than the latent has; that mismatch is not reproduced).
"""

import inspect
import math

import torch
from torch import Tensor

from .conditioning import Conditioning, DiffusionComponents, predict_noise

# COCO object categories, "a photo of a/an <object>", without body or clothing words (no person, tie, baseball glove,
# hair drier): the retain set must not teach the encoder what a concept such as nudity is about.
_COCO_OBJECTS = (
    "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light", "fire hydrant",
    "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "backpack", "umbrella", "handbag", "suitcase", "frisbee", "pair of skis", "snowboard", "sports ball",
    "kite", "baseball bat", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop",
    "computer mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "pair of scissors", "teddy bear", "toothbrush",
)
DEFAULT_RETAIN_PROMPTS = tuple(f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}" for name in _COCO_OBJECTS)
"""The default retain prompts: 76 "a photo of a <COCO object>" prompts (no body or clothing words)."""


def esd_target(e_0: Tensor, e_c: Tensor, eta: float) -> Tensor:
    """The ESD target e_0 - eta (e_c - e_0): the unconditional prediction pushed away from the concept.

    Args:
        e_0, e_c: Tensors of one shape (batch, channels, height, width): the frozen model's predictions for the
            empty prompt and the concept prompt.
        eta: negative guidance, >= 0.
    """
    if e_0.shape != e_c.shape:
        raise ValueError(f"`e_0` and `e_c` must have one shape, got {tuple(e_0.shape)} and {tuple(e_c.shape)}.")
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"`eta` must be a finite number >= 0, got {eta!r}.")
    return e_0 - eta * (e_c - e_0)


def row_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-row mean squared error in float32, shape (batch,)."""
    if prediction.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(prediction.shape)} and {tuple(target.shape)}.")
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def _step_kwargs(scheduler, generator) -> dict:
    """`eta=0` and the generator where the scheduler's `step` takes them (as `prepare_extra_step_kwargs`)."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in parameters:
        kwargs["eta"] = 0.0
    if "generator" in parameters:
        kwargs["generator"] = generator
    return kwargs


@torch.no_grad()
def partial_ddim_sample(
    components: DiffusionComponents,
    conditioning: Conditioning,
    unconditional: Conditioning,
    n_steps: int,
    guidance_scale: float,
    generator: torch.Generator | list[torch.Generator] | None = None,
    *,
    ddim_steps: int = 50,
    latents: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the first `n_steps` steps of the pipeline's denoising loop (classifier-free guidance) and stop.

    Follows `StableDiffusionPipeline.__call__`: `scheduler.set_timesteps(ddim_steps)`, x_T = N(0, I) x
    `init_noise_sigma`, then per step the guided prediction e_u + g (e_c - e_u) of the UNet on [uncond, cond] and
    `scheduler.step` (eta 0). With a DDIM scheduler this is the partial DDIM sampling of ESD.

    Args:
        components: the pipeline parts; `components.scheduler` gets `set_timesteps(ddim_steps)`.
        conditioning: `Conditioning` of the prompts, batch rows (use the frozen encoder).
        unconditional: `Conditioning` of the empty prompt, same batch.
        n_steps: steps to run, 0 <= n_steps < ddim_steps.
        guidance_scale: CFG scale g (> 1 uses guidance; otherwise the conditional prediction alone).
        generator: a generator, or one per row (as diffusers' `randn_tensor`), for x_T.
        ddim_steps: the length of the full schedule.
        latents: optional x_T, shape (batch, channels, height, width), used instead of drawing it.

    Returns:
        (z, t): the latents after `n_steps` steps, shape (batch, channels, height, width), and the timestep they are
        at, `scheduler.timesteps[n_steps]` (0-d LongTensor): query the UNet at z with t.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if not isinstance(ddim_steps, int) or isinstance(ddim_steps, bool) or ddim_steps < 1:
        raise ValueError(f"`ddim_steps` must be an integer >= 1, got {ddim_steps!r}.")
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or not 0 <= n_steps < ddim_steps:
        raise ValueError(f"`n_steps` must be an integer in [0, ddim_steps={ddim_steps}), got {n_steps!r}.")
    if len(conditioning) != len(unconditional):
        raise ValueError(f"`conditioning` and `unconditional` must have one batch size, got {len(conditioning)} and "
                         f"{len(unconditional)}.")
    unet, scheduler = components.unet, components.scheduler
    device, dtype = conditioning.prompt_embeds.device, unet.dtype
    batch = len(conditioning)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch, unet.config.in_channels, height, width)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
    scheduler.set_timesteps(ddim_steps, device=device)
    latents = latents.to(device=device, dtype=dtype) * scheduler.init_noise_sigma
    guided = guidance_scale > 1.0
    both = Conditioning.cat([unconditional, conditioning]) if guided else conditioning
    step_kwargs = _step_kwargs(scheduler, generator)
    for t in scheduler.timesteps[:n_steps]:
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = predict_noise(unet, model_input, t, both)
        if guided:
            noise_uncond, noise_text = noise.chunk(2)
            noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
    return latents, scheduler.timesteps[n_steps]


class RetainPromptSampler:
    """Draws `batch_size` retain prompts per draw, without replacement within a seeded pass over the list.

    Draw j is a pure function of (seed, j): pass e = j // (n // batch_size) is a permutation of the n prompts made by
    a generator seeded with (seed, e), and the draw takes its slot j mod (n // batch_size). A pass ends when fewer
    than `batch_size` unused prompts remain (the reference resets there). Pure indexing makes draws independent of
    the process layout: under DDP each rank draws the indices of its own rows.
    """

    def __init__(self, prompts, batch_size: int, seed: int = 0):
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError("`retain_prompts` must be a non-empty list of strings (None: the default list).")
        if not all(isinstance(prompt, str) and prompt.strip() for prompt in prompts):
            raise ValueError("`retain_prompts` must hold non-empty strings.")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= len(prompts):
            raise ValueError(f"`retain_batch` must be an integer in [1, {len(prompts)}] (the number of retain "
                             f"prompts), got {batch_size!r}.")
        self.prompts, self.batch_size, self.seed = list(prompts), batch_size, seed
        self.draws_per_pass = len(self.prompts) // batch_size
        self._permutation = (None, None)

    def draw(self, index: int) -> list[str]:
        """The prompts of draw `index` (>= 0)."""
        epoch, slot = divmod(index, self.draws_per_pass)
        if self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = (epoch, torch.randperm(len(self.prompts), generator=generator).tolist())
        chosen = self._permutation[1][slot * self.batch_size:(slot + 1) * self.batch_size]
        return [self.prompts[position] for position in chosen]
