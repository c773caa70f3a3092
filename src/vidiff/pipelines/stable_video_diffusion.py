"""Stable Video Diffusion (SVD, SVD-XT): first image -> a short video.

Components: a CLIP image encoder (``CLIPVisionModelWithProjection``) and its ``CLIPImageProcessor``, an
``AutoencoderKLTemporalDecoder``, a ``UNetSpatioTemporalConditionModel`` and an ``EulerDiscreteScheduler``
(Karras sigmas, v-prediction, continuous timesteps). Stages: image -> CLIP embedding (one-token context) and
noise-augmented VAE latent (concatenated to every frame's noisy latent) -> denoising with a guidance scale that
ramps from ``min_guidance_scale`` on the first frame to ``max_guidance_scale`` on the last -> temporal decode.

Latents are laid out ``(batch, frames, channels, height, width)`` as in the reference.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..runtime.guidance import run_denoiser
from ..runtime.memory import release_free_memory
from ..runtime.random import randn_tensor
from .base import DiffusionPipeline, cfg_combine, check_generator, check_guidance, check_latents, check_positive_int, check_size
from .common import check_decode_chunk_size, vae_scale_factor
from .image_encoding import ImageInput, clip_pixel_values, clip_size, image_embeddings, load_images, vae_pixels
from .video_io import VideoPipelineOutput, check_output_type, postprocess_video

StableVideoDiffusionPipelineOutput = VideoPipelineOutput


def _check_number(name: str, value: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


def _check_sigmas(sigmas: Any, scheduler: Any) -> None:
    if sigmas is None:
        return
    if "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"{type(scheduler).__name__}.set_timesteps does not take custom sigmas; use an EulerDiscreteScheduler or drop sigmas=")
    try:
        values = np.asarray(sigmas.detach().cpu() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"sigmas must be a list of numbers, got {type(sigmas).__name__}") from None
    if values.ndim != 1 or values.size < 2 or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"sigmas must be a list of at least 2 finite, non-negative numbers (the last is the final sigma, "
                         f"usually 0), got {sigmas!r}")


class StableVideoDiffusionPipeline(DiffusionPipeline):
    """Image -> video with Stable Video Diffusion (stabilityai/stable-video-diffusion-img2vid, -img2vid-xt)."""

    model_cpu_offload_seq = "image_encoder->unet->vae"
    _callback_tensor_inputs = ("latents",)

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor):
        self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor)
        self.vae_scale_factor = vae_scale_factor(vae)

    @property
    def guidance_scale(self) -> float | torch.Tensor:
        """``max_guidance_scale`` while encoding, then the per-frame scales ``(b, f, 1, 1, 1)``."""
        return getattr(self, "_guidance_scale", 1.0)

    @property
    def do_classifier_free_guidance(self) -> bool:
        g = self.guidance_scale
        return bool(g > 1) if isinstance(g, (int, float)) else bool(g.max() > 1)

    # ----------------------------------------------------------------- stages
    def _encode_image(self, image: ImageInput, device, num_videos_per_prompt: int, do_classifier_free_guidance: bool) -> torch.Tensor:
        """CLIP embedding of each image: ``((2) b n, 1, d)``."""
        pixels = clip_pixel_values(load_images(image), self.feature_extractor, clip_size(self.image_encoder))
        return image_embeddings(self.image_encoder, pixels, device, num_videos_per_prompt, do_classifier_free_guidance)

    def _encode_vae_image(self, image: torch.Tensor, device, num_videos_per_prompt: int, do_classifier_free_guidance: bool) -> torch.Tensor:
        """``(b, 3, H, W)`` pixels -> the posterior mode ``((2) b n, c, h, w)``, each image's videos adjacent."""
        image_latents = self.vae.encode(image.to(device=device, dtype=self.vae.dtype)).latent_dist.mode()
        image_latents = image_latents.repeat_interleave(num_videos_per_prompt, dim=0)
        if do_classifier_free_guidance:
            image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
        return image_latents

    def encode_vae_image(self, pixels: torch.Tensor, noise_aug_strength: float, generator, device, num_videos_per_prompt: int,
                         do_cfg: bool, dtype: torch.dtype) -> torch.Tensor:
        """Noise-augment the ``[-1, 1]`` pixels and encode them; a float16 VAE with ``force_upcast`` encodes in float32."""
        pixels = pixels.to(device)
        noise = randn_tensor(pixels.shape, generator=generator[: pixels.shape[0]] if isinstance(generator, list) else generator,
                             device=device, dtype=pixels.dtype)
        pixels = pixels + noise_aug_strength * noise
        upcast = self.vae.dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            latents = self._encode_vae_image(pixels, device, num_videos_per_prompt, do_cfg)
        finally:
            if upcast:
                self.vae.to(dtype=torch.float16)
        return latents.to(dtype)

    def _expected_time_ids(self) -> int:
        return self.unet.add_embedding.linear_1.in_features

    def _get_add_time_ids(self, fps, motion_bucket_id, noise_aug_strength, dtype, batch_size: int, num_videos_per_prompt: int,
                          do_classifier_free_guidance: bool) -> torch.Tensor:
        """``[fps, motion_bucket_id, noise_aug_strength]`` per video (fps as given: the caller passes fps - 1)."""
        ids = torch.tensor([[fps, motion_bucket_id, noise_aug_strength]], dtype=dtype).repeat(batch_size * num_videos_per_prompt, 1)
        return torch.cat([ids, ids]) if do_classifier_free_guidance else ids

    def prepare_latents(self, batch_size: int, num_frames: int, num_channels_latents: int, height: int, width: int, dtype,
                        device, generator, latents: torch.Tensor | None = None) -> torch.Tensor:
        s = self.vae_scale_factor
        shape = (batch_size, num_frames, num_channels_latents // 2, height // s, width // s)  # b f c h w
        check_generator(generator, batch_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def guidance_ramp(self, min_scale: float, max_scale: float, num_frames: int, batch: int, device, dtype) -> torch.Tensor:
        """Per-frame guidance, linear from ``min_scale`` (first frame) to ``max_scale`` (last): ``(b, f, 1, 1, 1)``."""
        ramp = torch.linspace(min_scale, max_scale, num_frames).unsqueeze(0).to(device, dtype)
        return ramp.repeat(batch, 1)[..., None, None, None]

    def decode_latents(self, latents: torch.Tensor, num_frames: int, decode_chunk_size: int = 14) -> torch.Tensor:
        """``(b, f, c, h, w)`` latents -> ``(b, c, f, H, W)`` float32 frames in [-1, 1], ``decode_chunk_size`` frames of
        one video at a time (a chunk never mixes two videos)."""
        b = latents.shape[0]
        flat = 1 / self.vae.config.scaling_factor * latents.flatten(0, 1)  # (b f) c h w
        forward = getattr(self.vae, "_orig_mod", self.vae).forward
        takes_frames = "num_frames" in inspect.signature(forward).parameters
        frames = []
        for video in flat.split(num_frames):
            for i in range(0, num_frames, decode_chunk_size):
                chunk = video[i : i + decode_chunk_size]
                kwargs = {"num_frames": chunk.shape[0]} if takes_frames else {}
                release_free_memory()  # what the last stage or chunk freed goes back before this chunk's maps
                frames.append(self.vae.decode(chunk, **kwargs).sample)
        frames = torch.cat(frames)  # (b f) c H W
        return frames.reshape(b, num_frames, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()

    def set_timesteps(self, num_inference_steps: int, sigmas, device) -> tuple[torch.Tensor, int]:
        if sigmas is not None:
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
            return self.scheduler.timesteps, len(self.scheduler.timesteps)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps, num_inference_steps

    def make_step(self, image_latents, image_embeds, added_time_ids, guidance, do_cfg: bool) -> Callable:
        """UNet on [uncond, cond] with the image latents concatenated on channels, per-frame guidance, Euler step."""

        def step(i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
            latents = state["latents"]
            x = torch.cat([latents] * 2) if do_cfg else latents
            x = torch.cat([self.scheduler.scale_model_input(x, t), image_latents], dim=2)  # b f 2c h w
            noise_pred = run_denoiser(self.unet, x, t, guided=do_cfg, encoder_hidden_states=image_embeds, added_time_ids=added_time_ids)
            if do_cfg:
                noise_pred = cfg_combine(noise_pred, guidance)
            return self.scheduler.step(noise_pred, t, latents).prev_sample

        return step

    # ----------------------------------------------------------------- checks
    def check_inputs(self, image, height: int, width: int, num_frames=None, num_inference_steps=25, sigmas=None,
                     min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7, motion_bucket_id=127, noise_aug_strength=0.02,
                     decode_chunk_size=None, num_videos_per_prompt=1, output_type="pil",
                     callback_on_step_end_tensor_inputs=("latents",)) -> None:
        """Everything that can be checked before an image is read or a model runs."""
        if image is None:
            raise ValueError("pass `image`: the first frame of the video (a PIL image, a path, or a tensor in [0, 1])")
        check_size(height, width, self.vae_scale_factor)
        check_positive_int("num_frames", num_frames)
        if sigmas is None:
            check_positive_int("num_inference_steps", num_inference_steps)
        _check_sigmas(sigmas, self.scheduler)
        check_guidance("min_guidance_scale", min_guidance_scale)
        check_guidance("max_guidance_scale", max_guidance_scale)
        if min_guidance_scale > max_guidance_scale:
            raise ValueError(f"min_guidance_scale ({min_guidance_scale}) is larger than max_guidance_scale ({max_guidance_scale}); "
                             "the scale ramps from min (first frame) up to max (last frame): swap them or make them equal")
        _check_number("fps", fps)
        _check_number("motion_bucket_id", motion_bucket_id)
        _check_number("noise_aug_strength", noise_aug_strength, minimum=0)
        check_decode_chunk_size(decode_chunk_size)
        check_positive_int("num_videos_per_prompt", num_videos_per_prompt)
        check_output_type(output_type)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        expected = self._expected_time_ids()
        if expected != 3 * self.unet.config.addition_time_embed_dim:
            raise ValueError(f"the UNet's add_embedding takes {expected} features but 3 time ids (fps, motion bucket, noise "
                             f"augmentation) x addition_time_embed_dim={self.unet.config.addition_time_embed_dim} make "
                             f"{3 * self.unet.config.addition_time_embed_dim}; the UNet config is inconsistent")

    def _check_latents(self, latents, shape: tuple[int, ...]) -> None:
        s = self.vae_scale_factor
        check_latents(latents, shape, f"(batch x num_videos_per_prompt, frames, channels, height/{s}, width/{s})")

    # ----------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        sigmas: Sequence[float] | None = None,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ):
        """Generate a video that starts from ``image``.

        ``image``: a PIL image, a list of them, a local path or URL (or a list), a ``(c, h, w)`` / ``(b, c, h, w)``
        tensor in [0, 1], or a channels-last numpy array. Transparent images are composited over white, greyscale
        replicated to RGB and 16-bit images scaled to 8 bits (as :func:`vidiff.load_image`). ``fps`` and
        ``motion_bucket_id`` condition the motion (the UNet sees ``fps - 1``, as trained); ``noise_aug_strength`` is
        the noise added to the conditioning image. Guidance ramps per frame from ``min_guidance_scale`` to
        ``max_guidance_scale`` and is off when ``max_guidance_scale <= 1``. ``decode_chunk_size`` frames (default:
        all) are decoded at a time. Returns ``.frames`` (``output_type`` "pil", "np", "pt" or "latent"); with
        ``return_dict=False`` the frames themselves, as the reference.

        Two differences from the reference, both only for several images with ``num_videos_per_prompt > 1`` or
        ``decode_chunk_size`` not dividing the frame count: each video is conditioned on its own image's latent and
        embedding (the reference pairs image i's embedding with another image's latent), and decode chunks never
        span two videos.
        """
        height = self.unet.config.sample_size * self.vae_scale_factor if height is None else height
        width = self.unet.config.sample_size * self.vae_scale_factor if width is None else width
        num_frames = self.unet.config.num_frames if num_frames is None else num_frames
        num_videos_per_prompt = 1 if num_videos_per_prompt is None else num_videos_per_prompt
        self.check_inputs(image, height, width, num_frames, num_inference_steps, sigmas, min_guidance_scale, max_guidance_scale,
                          fps, motion_bucket_id, noise_aug_strength, decode_chunk_size, num_videos_per_prompt, output_type,
                          callback_on_step_end_tensor_inputs)
        decode_chunk_size = num_frames if decode_chunk_size is None else decode_chunk_size
        images = load_images(image)
        batch = len(images) * num_videos_per_prompt
        check_generator(generator, batch)
        s = self.vae_scale_factor
        self._check_latents(latents, (batch, num_frames, self.unet.config.in_channels // 2, height // s, width // s))

        device = self._execution_device
        self._guidance_scale = max_guidance_scale
        do_cfg = self.do_classifier_free_guidance
        image_embeds = self._encode_image(images, device, num_videos_per_prompt, do_cfg)
        dtype = image_embeds.dtype
        image_latents = self.encode_vae_image(vae_pixels(images, height, width), noise_aug_strength, generator, device,
                                              num_videos_per_prompt, do_cfg, dtype)
        image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)  # b f c h w
        added_time_ids = self._get_add_time_ids(fps - 1, motion_bucket_id, noise_aug_strength, dtype, len(images),
                                                num_videos_per_prompt, do_cfg).to(device)

        timesteps, num_inference_steps = self.set_timesteps(num_inference_steps, sigmas, device)
        latents = self.prepare_latents(batch, num_frames, self.unet.config.in_channels, height, width, dtype, device, generator, latents)
        self._guidance_scale = self.guidance_ramp(min_guidance_scale, max_guidance_scale, num_frames, batch, device, latents.dtype)
        step = self.make_step(image_latents, image_embeds, added_time_ids, self._guidance_scale, do_cfg)
        state = self.denoise({"latents": latents}, timesteps, step, num_inference_steps=num_inference_steps,
                             callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        latents = state["latents"]
        frames = latents if output_type == "latent" else postprocess_video(self.decode_latents(latents, num_frames, decode_chunk_size), output_type)
        self.maybe_free_model_hooks()
        return StableVideoDiffusionPipelineOutput(frames=frames) if return_dict else frames
