"""Stage functions shared by the video pipelines: frame-wise scheduler steps, VAE decode/encode in chunks."""

from __future__ import annotations

from typing import Any

import torch


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
    frames = torch.cat([vae.decode(flat[i : i + step]).sample for i in range(0, flat.shape[0], step)])
    return batch_to_frames(frames, b).float()


def check_decode_chunk_size(decode_chunk_size: Any) -> None:
    if decode_chunk_size is not None and (isinstance(decode_chunk_size, bool) or not isinstance(decode_chunk_size, int) or decode_chunk_size < 1):
        raise ValueError(f"decode_chunk_size must be a positive integer (frames decoded at once) or None, got {decode_chunk_size!r}")
