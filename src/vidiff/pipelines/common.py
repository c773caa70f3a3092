"""Stage functions shared by the pipelines: noise latents, the text-guided UNet step, frame-wise scheduler steps,
VAE decode in chunks, and the video pipelines' latent shape and output stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..runtime.guidance import run_denoiser
from ..runtime.memory import release_free_memory
from ..runtime.random import randn_tensor
from .base import cfg_combine
from .video_io import VideoPipelineOutput, postprocess_video


def vae_scale_factor(vae) -> int:
    """Pixels per latent along each side: 2 per VAE down stage (8 when the pipeline has no VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8


def prepare_noise_latents(scheduler, shape, dtype, device, generator, latents: torch.Tensor | None = None) -> torch.Tensor:
    """Starting latents: ``latents`` (moved to ``device``) or a fresh draw, scaled by the scheduler's initial sigma."""
    latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None else latents.to(device)
    return latents * scheduler.init_noise_sigma


# state key: (per-frame text states, the same once per video). While state["prompt_embeds"] is still that per-frame
# tensor (no callback replaced it), the UNet gets the per-video one: the same attention output, without computing
# the cross-attention keys and values once per frame.
PER_VIDEO_TEXT = "_per_video_text"


def text_guided_step(pipe, guidance_scale: float, do_cfg: bool, cross_attention_kwargs,
                     scheduler_step: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]) -> Callable:
    """The per-step function of the text-to-video loops: UNet on [uncond, cond] latents (b, c, f, h, w) with
    ``state["prompt_embeds"]`` (or its per-video form, see ``PER_VIDEO_TEXT``), classifier-free guidance, then
    ``scheduler_step(noise_pred, t, latents)``."""

    def step(i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
        latents = state["latents"]
        x = torch.cat([latents] * 2) if do_cfg else latents
        x = pipe.scheduler.scale_model_input(x, t)
        text = state["prompt_embeds"]
        per_frame, per_video = state.get(PER_VIDEO_TEXT, (None, None))
        if per_frame is text:
            text = per_video
        noise_pred = run_denoiser(pipe.unet, x, t, guided=do_cfg, encoder_hidden_states=text, cross_attention_kwargs=cross_attention_kwargs)
        if do_cfg:
            noise_pred = cfg_combine(noise_pred, guidance_scale)
        return scheduler_step(noise_pred, t, latents)

    return step


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """b c f h w -> (b f) c h w"""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def batch_to_frames(x: torch.Tensor, b: int) -> torch.Tensor:
    """(b f) c h w -> b c f h w"""
    bf, c, h, w = x.shape
    return x.reshape(b, bf // b, c, h, w).permute(0, 2, 1, 3, 4)


def scheduler_step_frames(scheduler, noise_pred: torch.Tensor, t: Any, latents: torch.Tensor, step_kwargs: dict) -> torch.Tensor:
    """One scheduler step with every frame as its own image, as the reference's video pipelines do."""
    b = latents.shape[0]
    out = scheduler.step(frames_to_batch(noise_pred), t, frames_to_batch(latents), **step_kwargs).prev_sample
    return batch_to_frames(out, b)


def decode_latents(vae, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
    """b c f h w latents -> b c f H W frames in [-1, 1] (float32), decoding ``decode_chunk_size`` frames at a time."""
    b = latents.shape[0]
    flat = frames_to_batch(latents / vae.config.scaling_factor)
    step = decode_chunk_size or flat.shape[0]
    frames = []
    for i in range(0, flat.shape[0], step):
        release_free_memory()  # what the last stage or chunk freed goes back before this chunk's maps
        frames.append(vae.decode(flat[i : i + step]).sample)
    frames = torch.cat(frames)
    return batch_to_frames(frames, b).float()


def check_decode_chunk_size(decode_chunk_size: Any) -> None:
    if decode_chunk_size is not None and (isinstance(decode_chunk_size, bool) or not isinstance(decode_chunk_size, int) or decode_chunk_size < 1):
        raise ValueError(f"decode_chunk_size must be a positive integer (frames decoded at once) or None, got {decode_chunk_size!r}")


class VideoStagesMixin:
    """The latent shape and the output stage of pipelines whose UNet denoises (b, c, f, h, w) latents."""

    _output_class: type = VideoPipelineOutput

    def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch_size, self.unet.config.in_channels, num_frames, height // s, width // s)

    def finish(self, latents: torch.Tensor, output_type: str, return_dict: bool, decode_chunk_size: int | None):
        """Decode (unless "latent") and convert to ``output_type``; then release the offload hooks."""
        video = latents if output_type == "latent" else postprocess_video(self.decode_latents(latents, decode_chunk_size), output_type)
        self.maybe_free_model_hooks()
        return self._output_class(frames=video) if return_dict else (video,)
