"""Text2Video-Zero: a Stable Diffusion 1.x image model made into a zero-shot video generator.

The first frame is denoised to step ``t1`` and on to ``t0``; its ``t0`` latent is copied to the other frames, shifted
by a global translation (``motion_field_strength_x/y`` pixels per frame), renoised back to ``t1`` and every frame is
then denoised together with cross-frame attention (each frame attends to the first). Importable as in the reference::

    from vidiff.pipelines.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...layers.cross_frame import CrossFrameAttnProcessor, CrossFrameAttnProcessor2_0
from ...runtime.random import randn_tensor
from ..base import cfg_combine, check_guidance, check_positive_int, check_size
from ..common import batch_to_frames, decode_latents
from ..prompt import check_prompt_inputs
from ..stable_diffusion import StableDiffusionBase


__all__ = ["CrossFrameAttnProcessor", "CrossFrameAttnProcessor2_0", "TextToVideoPipelineOutput", "TextToVideoZeroPipeline",
           "coords_grid", "warp_single_latent", "create_motion_field_and_warp_latents"]

OUTPUT_TYPES = ("tensor", "np", "pt", "pil", "latent")
FLOW_SIZE = 512  # the reference builds its translation field at 512 x 512 and resizes it to the latent size


@dataclass
class TextToVideoPipelineOutput:
    """``images``: (frames, h, w, 3) floats in [0, 1] (output_type "tensor"/"np", as the reference returns them),
    a (frames, 3, h, w) tensor ("pt"), a list of PIL images ("pil") or (frames, c, h/8, w/8) latents ("latent")."""

    images: Any
    nsfw_content_detected: list[bool] | None = None

    def __getitem__(self, i: int) -> Any:
        return (self.images, self.nsfw_content_detected)[i]


# ---------------------------------------------------------------------------------------------- motion field
def coords_grid(batch: int, ht: int, wd: int, device) -> torch.Tensor:
    """(batch, 2, ht, wd) pixel coordinates, x first."""
    ys, xs = torch.meshgrid(torch.arange(ht, device=device), torch.arange(wd, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].repeat(batch, 1, 1, 1)


def warp_single_latent(latent: torch.Tensor, reference_flow: torch.Tensor) -> torch.Tensor:
    """Warp one frame's latent (1, c, h, w) by a flow (1, 2, H, W) given in pixels of an H x W canvas: each latent
    pixel reads the canvas point (x, y) + flow, resized to the latent grid (nearest sampling, reflected edges)."""
    _, _, big_h, big_w = reference_flow.shape
    coords = coords_grid(1, big_h, big_w, latent.device).to(latent.dtype) + reference_flow  # 1 2 H W
    coords[:, 0] /= big_w
    coords[:, 1] /= big_h
    grid = F.interpolate(coords * 2.0 - 1.0, size=latent.shape[-2:], mode="bilinear", align_corners=False).permute(0, 2, 3, 1)  # 1 h w 2
    return F.grid_sample(latent, grid, mode="nearest", padding_mode="reflection", align_corners=False)


def create_motion_field_and_warp_latents(motion_field_strength_x: float, motion_field_strength_y: float,
                                         frame_ids: Sequence[int], latents: torch.Tensor) -> torch.Tensor:
    """Translate latent k by ``frame_ids[k] * motion_field_strength`` pixels of a 512 x 512 canvas."""
    warped = latents.clone()
    for k, fid in enumerate(frame_ids):
        shift = torch.tensor([motion_field_strength_x * fid, motion_field_strength_y * fid], device=latents.device)
        flow = shift.to(latents.dtype).view(1, 2, 1, 1).expand(1, 2, FLOW_SIZE, FLOW_SIZE)
        warped[k] = warp_single_latent(latents[k : k + 1], flow)[0]
    return warped


# ---------------------------------------------------------------------------------------------- checks
def check_t0_t1(t0: Any, t1: Any, num_inference_steps: int) -> None:
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer step index, got {v!r}")
    if not 0 <= t0 < t1 <= num_inference_steps - 1:
        raise ValueError(
            f"need 0 <= t0 < t1 <= num_inference_steps - 1 = {num_inference_steps - 1}, got t0={t0}, t1={t1}. t0 and t1 "
            f"count steps from the end of the schedule (defaults 44 and 47 are for 50 steps); for "
            f"num_inference_steps={num_inference_steps} try t0={max(0, num_inference_steps - 6)}, t1={max(1, num_inference_steps - 3)}"
        )


def check_frame_ids(frame_ids: Any, video_length: int) -> list[int]:
    if frame_ids is None:
        return list(range(video_length))
    ids = list(frame_ids)
    if len(ids) != video_length:
        raise ValueError(f"frame_ids has {len(ids)} entries but video_length is {video_length}; pass one id per frame")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"frame_ids must be integers (frame positions in the whole video), got {ids!r}")
    return [int(i) for i in ids]


def check_single_prompt(prompt: Any, negative_prompt: Any, num_videos_per_prompt: Any) -> None:
    check_prompt_inputs(prompt, negative_prompt, None, None)
    if isinstance(prompt, list) and len(prompt) != 1:
        raise ValueError(f"TextToVideoZeroPipeline makes one video per call; got {len(prompt)} prompts. Call it once per prompt")
    if num_videos_per_prompt != 1:
        raise ValueError(f"num_videos_per_prompt must be 1 (as in the reference), got {num_videos_per_prompt!r}; "
                         "call the pipeline again with another generator for another video")


def check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


# ---------------------------------------------------------------------------------------------- pipeline
class TextToVideoZeroPipeline(StableDiffusionBase):
    """Zero-shot text -> video with a Stable Diffusion 1.x checkpoint (e.g. stable-diffusion-v1-5).

    Components, prompt encoding and loading are the Stable Diffusion pipelines' (no safety checker is run)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ("safety_checker", "feature_extractor")
    _callback_tensor_inputs = ("latents",)

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 requires_safety_checker: bool = True):
        self._register(requires_safety_checker, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                       scheduler=scheduler, safety_checker=safety_checker, feature_extractor=feature_extractor)

    # ----------------------------------------------------------------- stages
    def forward_loop(self, x_t0: torch.Tensor, t0: int, t1: int, generator) -> torch.Tensor:
        """Renoise latents from training timestep t0 to t1 > t0 (the DDPM forward process in one jump)."""
        eps = randn_tensor(x_t0.shape, generator=generator, dtype=x_t0.dtype, device=x_t0.device)
        alpha = torch.prod(self.scheduler.alphas[t0:t1])
        return torch.sqrt(alpha) * x_t0 + torch.sqrt(1 - alpha) * eps

    def make_step(self, guidance_scale: float, do_cfg: bool, step_kwargs: dict) -> Callable:
        def step(i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
            latents = state["latents"]  # f c h w
            x = self.scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
            noise_pred = self.unet(x, t, encoder_hidden_states=state["prompt_embeds"], return_dict=False)[0]
            if do_cfg:
                noise_pred = cfg_combine(noise_pred, guidance_scale)
            return self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample

        return step

    def backward_loop(self, latents, timesteps, prompt_embeds, step, offset: int, callbacks: dict) -> torch.Tensor:
        """Denoise ``latents`` over ``timesteps`` (schedule positions ``offset``...) with the shared loop."""
        on_step_end = callbacks["callback_on_step_end"]
        if on_step_end is not None:
            user = on_step_end
            on_step_end = lambda pipe, i, t, kw: user(pipe, i + offset, t, kw)  # noqa: E731  (schedule position)
        state = self.denoise({"latents": latents, "prompt_embeds": prompt_embeds}, timesteps, step,
                             num_inference_steps=len(timesteps) // getattr(self.scheduler, "order", 1),
                             callback_on_step_end=on_step_end,
                             callback_on_step_end_tensor_inputs=callbacks["callback_on_step_end_tensor_inputs"],
                             callback=callbacks["callback"], callback_steps=callbacks["callback_steps"])
        return state["latents"]

    def sample(self, latents, prompt_embeds, timesteps, video_length, frame_ids, t0, t1, motion, step, generator,
               callbacks) -> torch.Tensor:
        """First frame to t1 and t0, motion-warped copies renoised to t1, then all frames from t1 to 0."""
        n = len(timesteps)
        x1_t1 = self.backward_loop(latents, timesteps[: -t1 - 1], prompt_embeds, step, 0, callbacks)
        if self.interrupt:
            return x1_t1
        scheduler_at_t1 = copy.deepcopy(self.scheduler)
        x1_t0 = self.backward_loop(x1_t1, timesteps[-t1 - 1 : -t0 - 1], prompt_embeds, step, n - t1 - 1, callbacks)
        if self.interrupt:
            return x1_t0
        xk_t0 = create_motion_field_and_warp_latents(motion[0], motion[1], frame_ids[1:], x1_t0.repeat(video_length - 1, 1, 1, 1))
        xk_t1 = self.forward_loop(xk_t0, timesteps[-t0 - 1].item(), timesteps[-t1 - 1].item(), generator)
        # prompt_embeds stays one row per copy of the video ([uncond, cond]) for a batch of (copies x frames): the
        # attention layers read it as shared by each copy's frames (the reference repeats it for every frame)
        self.scheduler = scheduler_at_t1
        return self.backward_loop(torch.cat([x1_t1, xk_t1]), timesteps[-t1 - 1 :], prompt_embeds, step, n - t1 - 1, callbacks)

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """(f, c, h, w) latents -> output_type ("tensor"/"np": (f, H, W, 3) floats in [0, 1], as the reference)."""
        if output_type == "latent":
            return latents
        video = decode_latents(self.vae, batch_to_frames(latents, 1))  # 1 c f H W in [-1, 1]
        image = (video[0] / 2 + 0.5).clamp(0, 1).cpu()  # c f H W
        if output_type == "pt":
            return image.permute(1, 0, 2, 3)  # f c H W
        image = image.permute(1, 2, 3, 0).numpy()  # f H W c
        if output_type == "pil":
            from ...media.frames import to_pil_frames

            return to_pil_frames(image)
        return image

    # ----------------------------------------------------------------- checks
    def check_inputs(self, prompt, negative_prompt, video_length, height, width, num_inference_steps, guidance_scale,
                     num_videos_per_prompt, generator, latents, motion, output_type, callback_steps,
                     callback_on_step_end_tensor_inputs, t0, t1) -> None:
        check_single_prompt(prompt, negative_prompt, num_videos_per_prompt)
        check_positive_int("video_length", video_length)
        check_size(height, width, self.vae_scale_factor)
        check_positive_int("num_inference_steps", num_inference_steps)
        check_guidance("guidance_scale", guidance_scale)
        check_number("motion_field_strength_x", motion[0])
        check_number("motion_field_strength_y", motion[1])
        check_t0_t1(t0, t1, num_inference_steps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        self.check_callback_inputs(callback_on_step_end_tensor_inputs, callback_steps)
        if isinstance(generator, list) and len(generator) != 1:
            raise ValueError(f"got a list of {len(generator)} generators; this pipeline makes one video: pass one generator")
        shape = (1, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be a tensor of shape {shape} (the first frame's noise), got {got}")
        if not hasattr(self.scheduler, "alphas"):
            raise ValueError(f"{type(self.scheduler).__name__} has no `alphas`; Text2Video-Zero renoises with the DDPM "
                             "forward process: use DDIMScheduler (the reference's choice) or DDPMScheduler")

    # ----------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        video_length: int | None = 8,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        motion_field_strength_x: float = 12,
        motion_field_strength_y: float = 12,
        output_type: str | None = "tensor",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int | None = 1,
        t0: int = 44,
        t1: int = 47,
        frame_ids: list[int] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate ``video_length`` frames for ``prompt`` (reference parameters and defaults).

        ``t0 < t1`` are step indices counted from the end of the schedule; ``frame_ids`` place the frames in a longer
        video (chunked generation). ``callback_on_step_end(pipe, i, t, kwargs)`` (vidiff) gets ``i`` = the position of
        ``t`` in ``scheduler.timesteps`` (steps from t1 on run twice: first frame, then all frames). With guidance
        off (``guidance_scale <= 1``, which the reference cannot run) frames attend to the first frame of one batch.
        """
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        motion = (motion_field_strength_x, motion_field_strength_y)
        self.check_inputs(prompt, negative_prompt, video_length, height, width, num_inference_steps, guidance_scale,
                          num_videos_per_prompt, generator, latents, motion, output_type, callback_steps,
                          callback_on_step_end_tensor_inputs, t0, t1)
        frame_ids = check_frame_ids(frame_ids, video_length)
        generator = generator[0] if isinstance(generator, list) else generator
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        step_kwargs = self.scheduler_step_kwargs(generator, eta)

        original_processors = self.unet.attn_processors
        self.unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2 if do_cfg else 1))
        try:
            cond, uncond = self.encode_prompt(prompt, device, 1, do_cfg, negative_prompt)
            prompt_embeds = torch.cat([uncond, cond]) if do_cfg else cond
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            shape = (1, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
            noise = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype) if latents is None else latents.to(device)
            callbacks = dict(callback=callback, callback_steps=callback_steps, callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
            out = self.sample(noise * self.scheduler.init_noise_sigma, prompt_embeds, self.scheduler.timesteps, video_length,
                              frame_ids, t0, t1, motion, self.make_step(guidance_scale, do_cfg, step_kwargs), generator, callbacks)
            image = self.decode(out, output_type)
        finally:
            self.unet.set_attn_processor(original_processors)
        self.maybe_free_model_hooks()  # frames are not safety-checked (vidiff runs no safety checker): nsfw is None
        return TextToVideoPipelineOutput(images=image, nsfw_content_detected=None) if return_dict else (image, None)
