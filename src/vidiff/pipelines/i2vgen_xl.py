"""I2VGen-XL (ali-vilab/i2vgen-xl): image + text -> video with an I2VGenXLUNet, an AutoencoderKL and CLIP encoders.

Stages: encode the prompt (CLIP text; ``clip_skip=1`` by default, applied to the negative prompt as well) -> encode
the image twice (a CLIP image embedding of a square centre crop, and VAE latents of a centre crop at the video size
plus a per-frame position mask) -> the shared denoising loop -> decode.

Unlike the reference's copy this runs on transformers 5 (the reference reaches for ``text_encoder.text_model``),
has ``callback_on_step_end`` and interruption, and checks its inputs before any model runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import PIL.Image
import torch

from ..media.frames import to_pil_frames
from ..runtime.guidance import run_denoiser
from .base import DiffusionPipeline, cfg_combine, check_generator, check_guidance, check_latents, check_positive_int, check_size
from .common import (
    VideoStagesMixin,
    check_decode_chunk_size,
    decode_latents,
    prepare_noise_latents,
    scheduler_step_frames,
    vae_scale_factor,
)
from .image_encoding import clip_normalize, image_embeddings, load_images, pil_to_tensor
from .prompt import _mask, _run_text_encoder, _tokenize, check_prompt_inputs, encode_prompt, prompt_batch_size, repeat_embeds
from .video_io import VideoPipelineOutput, check_output_type

I2VGenXLPipelineOutput = VideoPipelineOutput


# ----------------------------------------------------------------------------------------------- image crops
def center_crop_wide(images: list[PIL.Image.Image], size: tuple[int, int]) -> list[PIL.Image.Image]:
    """Box-filter resize so the images just cover ``size`` = (width, height), then crop the centre (the original
    I2VGen-XL transform, with the reference's rounding)."""
    w, h = images[0].size
    scale = min(w / size[0], h / size[1])
    new_size = (round(w // scale), round(h // scale))
    x1, y1 = (new_size[0] - size[0]) // 2, (new_size[1] - size[1]) // 2
    box = (x1, y1, x1 + size[0], y1 + size[1])
    return [im.resize(new_size, resample=PIL.Image.BOX).crop(box) for im in images]


def as_pil_images(image: Any) -> list[PIL.Image.Image]:
    """User image(s) -> RGB PIL images of one size. Tensors / arrays (floats in [0, 1] or uint8) become PIL images
    as in the reference (``round(x * 255)``), since every later step works on PIL images."""
    images = load_images(image)
    if isinstance(images, torch.Tensor):
        images = to_pil_frames(images, what="image")
    sizes = sorted({im.size for im in images})
    if len(sizes) > 1:
        raise ValueError(f"all images must have one size, got (width, height) sizes {sizes}; resize them first")
    return images


def _negative_texts(negative_prompt: str | list[str] | None, batch_size: int) -> list[str]:
    if negative_prompt is None:
        return [""] * batch_size
    texts = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(texts) != batch_size:
        raise ValueError(f"`negative_prompt` has {len(texts)} entries but the batch has {batch_size} prompts")
    return texts


class I2VGenXLPipeline(VideoStagesMixin, DiffusionPipeline):
    """Image + text -> video (ali-vilab/i2vgen-xl)."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "image_latents", "image_embeddings")

    def __init__(self, vae, text_encoder, tokenizer, image_encoder, feature_extractor, unet, scheduler):
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                              feature_extractor=feature_extractor, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = vae_scale_factor(vae)
        self._guidance_scale = 9.0

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    # ----------------------------------------------------------------- stages
    def encode_prompt(self, prompt, device, num_videos_per_prompt, negative_prompt=None, prompt_embeds=None,
                      negative_prompt_embeds=None, clip_skip=None):
        """(prompt_embeds, negative_prompt_embeds), each repeated per video; negatives only with guidance. Unlike the
        text-to-video pipelines, ``clip_skip`` applies to the negative prompt too (reference rule)."""
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        owner = self.text_encoder if self.text_encoder is not None else self.unet
        dtype = owner.dtype if owner is not None else None
        prompt_embeds, _ = encode_prompt(self.tokenizer, self.text_encoder, prompt, device, num_videos_per_prompt, False,
                                         prompt_embeds=prompt_embeds, clip_skip=clip_skip, dtype=dtype)
        if not self.do_classifier_free_guidance:
            return prompt_embeds, negative_prompt_embeds
        if negative_prompt_embeds is None:
            texts = _negative_texts(negative_prompt, batch_size)
            tokens = _tokenize(self.tokenizer, texts, prompt_embeds.shape[1])
            mask = _mask(self.text_encoder, tokens, device)
            negative_prompt_embeds = _run_text_encoder(self.text_encoder, tokens.input_ids, mask, device, clip_skip)
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=prompt_embeds.dtype, device=device)
        return prompt_embeds, repeat_embeds(negative_prompt_embeds, num_videos_per_prompt)

    def _encode_image(self, image, device, num_videos_per_prompt) -> torch.Tensor:
        """CLIP image embeddings (b n, 1, d), zeros in front with guidance. ``image``: PIL images at the encoder's size,
        or a tensor already normalised for it."""
        pixels = image if isinstance(image, torch.Tensor) else clip_normalize(pil_to_tensor(image), self.feature_extractor)
        return image_embeddings(self.image_encoder, pixels, device, num_videos_per_prompt, self.do_classifier_free_guidance)

    def prepare_image_latents(self, image, device, num_frames, num_videos_per_prompt) -> torch.Tensor:
        """(b, 3, H, W) pixels in [-1, 1] -> (b n [x2], 4, f, h, w): the image's latents, then frames filled with
        1/(f-1), 2/(f-1), ..., 1 (a position mask).

        The latents are sampled from torch's global random generator, as the reference does (seed it with
        ``torch.manual_seed``, as the guide does, for repeatable videos). Each image's copies are adjacent, like its
        prompt's and CLIP embedding's (the reference tiles them instead, which pairs images with the wrong prompts
        when several images come with ``num_videos_per_prompt > 1``)."""
        latents = self.vae.encode(image.to(device=device)).latent_dist.sample() * self.vae.config.scaling_factor
        latents = latents.unsqueeze(2)  # b c 1 h w
        masks = [torch.ones_like(latents) * ((i + 1) / (num_frames - 1)) for i in range(num_frames - 1)]
        latents = torch.cat([latents, *masks], dim=2)  # b c f h w
        latents = latents.repeat_interleave(num_videos_per_prompt, dim=0)
        return torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents

    def encode_images(self, images: list[PIL.Image.Image], height: int, width: int, num_frames: int,
                      num_videos_per_prompt: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images -> (CLIP image embeddings, image latents), with the reference's crops and resizes."""
        crop = self.feature_extractor.crop_size
        clip_size = (crop["width"], crop["height"]) if not isinstance(crop, int) else (crop, crop)
        square = [im.resize(clip_size, PIL.Image.BILINEAR) for im in center_crop_wide(images, (width, width))]
        embeds = self._encode_image(square, device, num_videos_per_prompt)
        pixels = 2.0 * pil_to_tensor(center_crop_wide(images, (width, height))) - 1.0  # b 3 H W
        latents = self.prepare_image_latents(pixels.to(device=device, dtype=embeds.dtype), device, num_frames, num_videos_per_prompt)
        return embeds, latents

    def prepare_latents(self, batch_size, num_channels_latents, num_frames, height, width, dtype, device, generator,
                        latents=None) -> torch.Tensor:
        s = self.vae_scale_factor
        shape = (batch_size, num_channels_latents, num_frames, height // s, width // s)
        return prepare_noise_latents(self.scheduler, shape, dtype, device, generator, latents)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        return decode_latents(self.vae, latents, decode_chunk_size)

    def make_step(self, fps: torch.Tensor, cross_attention_kwargs, step_kwargs) -> Callable:
        """The per-step function of the shared loop: UNet on [uncond, cond], guidance, frame-wise scheduler step."""
        do_cfg, scale = self.do_classifier_free_guidance, self.guidance_scale

        def step(i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
            latents = state["latents"]
            x = self.scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
            noise_pred = run_denoiser(self.unet, x, t, guided=do_cfg, encoder_hidden_states=state["prompt_embeds"], fps=fps,
                                      image_latents=state["image_latents"], image_embeddings=state["image_embeddings"],
                                      cross_attention_kwargs=cross_attention_kwargs)
            if do_cfg:
                noise_pred = cfg_combine(noise_pred, scale)
            return scheduler_step_frames(self.scheduler, noise_pred, t, latents, step_kwargs)

        return step

    # ----------------------------------------------------------------- checks
    def check_inputs(self, prompt, image, height, width, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None):
        """The reference's checks (size, prompt, image type); returns the images as RGB PIL images."""
        check_size(height, width, 8)
        check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if image is None:
            raise ValueError("pass `image`: the picture the video starts from (a PIL image, e.g. vidiff.load_image(path))")
        return as_pil_images(image)

    def _check_call(self, images, batch_size, num_frames, num_inference_steps, guidance_scale, target_fps, num_videos_per_prompt,
                    clip_skip, output_type, decode_chunk_size, cross_attention_kwargs, callback_on_step_end_tensor_inputs):
        if len(images) not in (1, batch_size):
            raise ValueError(f"got {len(images)} images for {batch_size} prompts; pass one image, or one per prompt")
        check_positive_int("num_frames", num_frames)
        check_positive_int("num_inference_steps", num_inference_steps)
        check_positive_int("num_videos_per_prompt", num_videos_per_prompt)
        check_guidance("guidance_scale", guidance_scale)
        if isinstance(target_fps, bool) or not isinstance(target_fps, (int, float)) or not math.isfinite(target_fps) or target_fps <= 0:
            raise ValueError(f"target_fps must be a positive number (the frame rate the video is made for), got {target_fps!r}")
        layers = getattr(getattr(self.text_encoder, "config", None), "num_hidden_layers", None)
        if clip_skip is not None and (isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0
                                      or (isinstance(layers, int) and clip_skip > layers)):
            raise ValueError(f"clip_skip must be None or an integer from 0 to the text encoder's {layers} layers, got {clip_skip!r}")
        check_output_type(output_type)
        check_decode_chunk_size(decode_chunk_size)
        if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
            raise TypeError(f"cross_attention_kwargs must be a dict or None, got {type(cross_attention_kwargs).__name__}")
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)

    # ----------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        height: int | None = 704,
        width: int | None = 1280,
        target_fps: int | None = 16,
        num_frames: int = 16,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        num_videos_per_prompt: int | None = 1,
        decode_chunk_size: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = 1,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate a video that starts from ``image`` and follows ``prompt``. Parameters and defaults follow the
        reference; ``callback_on_step_end(pipe, i, t, tensors)`` (may return replacements; ``pipe._interrupt = True``
        stops early) is a vidiff addition. ``image``: a PIL image, a path / URL, a list of those (one per prompt), or a
        tensor / array in [0, 1]. The image's VAE latents are sampled from torch's global generator (reference rule)."""
        default = self.unet.config.sample_size
        default = default * self.vae_scale_factor if isinstance(default, int) else None
        height, width = (default if height is None else height), (default if width is None else width)
        images = self.check_inputs(prompt, image, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds)
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        self._check_call(images, batch_size, num_frames, num_inference_steps, guidance_scale, target_fps, num_videos_per_prompt,
                         clip_skip, output_type, decode_chunk_size, cross_attention_kwargs, callback_on_step_end_tensor_inputs)
        total = batch_size * num_videos_per_prompt
        check_generator(generator, total)
        check_latents(latents, self.latent_shape(total, num_frames, height, width))
        images = images * batch_size if len(images) == 1 else images
        step_kwargs = self.scheduler_step_kwargs(generator, eta)

        device = self._execution_device
        self._guidance_scale = guidance_scale
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_videos_per_prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip)
        embeds, image_latents = self.encode_images(images, height, width, num_frames, num_videos_per_prompt, device)
        fps = torch.tensor([target_fps] * (2 if self.do_classifier_free_guidance else 1)).to(device).repeat(total, 1).ravel()
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(total, self.unet.config.in_channels, num_frames, height, width, prompt_embeds.dtype,
                                       device, generator, latents)
        state = {
            "latents": latents, "negative_prompt_embeds": negative_prompt_embeds,
            "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if self.do_classifier_free_guidance else prompt_embeds,
            "image_latents": image_latents, "image_embeddings": embeds,
        }
        state = self.denoise(state, self.scheduler.timesteps, self.make_step(fps, cross_attention_kwargs, step_kwargs),
                             num_inference_steps=num_inference_steps, callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        return self.finish(state["latents"], output_type, return_dict, decode_chunk_size)

