"""Stable Diffusion image pipelines: text -> image (``StableDiffusionPipeline``) and instruction editing
(``StableDiffusionInstructPix2PixPipeline``), plus the image pre/post-processing the image pipelines share.

Usage::

    pipe = StableDiffusionPipeline.from_pretrained("runwayml/stable-diffusion-v1-5", safety_checker=None)
    image = pipe("an astronaut riding a horse", generator=torch.Generator("cpu").manual_seed(0)).images[0]

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained("timbrooks/instruct-pix2pix", safety_checker=None)
    edited = pipe("make it winter", image=photo, image_guidance_scale=1.5).images[0]

vidiff has no safety checker: a folder's ``safety_checker`` is not loaded (one log line says so), generated images are
not filtered and ``nsfw_content_detected`` is always None.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..models.outputs import BaseOutput
from .base import (
    DiffusionPipeline,
    cfg_combine,
    check_generator,
    check_guidance,
    check_latents,
    check_positive_int,
    check_size,
    legacy_callback_kwargs,
)
from .common import prepare_noise_latents, vae_scale_factor
from .prompt import PromptEncoderMixin, check_prompt_inputs, prompt_batch_size
from .video_io import check_output_type

logger = logging.getLogger("vidiff")


@dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: a list of PIL images, np (batch, h, w, c) in [0, 1], pt (batch, c, h, w), or latents."""

    images: Any = None


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """``images`` as :class:`ImagePipelineOutput`; ``nsfw_content_detected`` is None (vidiff runs no safety checker)."""

    images: Any = None
    nsfw_content_detected: list[bool] | None = None


# ---------------------------------------------------------------------------------------------- images in / out
def _is_image_list(image: Any) -> bool:
    return isinstance(image, (list, tuple)) and len(image) > 0 and all(isinstance(i, (PIL.Image.Image, np.ndarray, torch.Tensor)) for i in image)


def check_image_input(image: Any, what: str = "image") -> int:
    """Raise unless ``image`` is a PIL image, array, tensor or a non-empty list of one of them; return its batch size."""
    if isinstance(image, PIL.Image.Image):
        return 1
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return 1 if image.ndim == 3 else int(image.shape[0])
    if _is_image_list(image) and len({type(i) for i in image}) == 1:
        return len(image)
    raise TypeError(f"{what} must be a PIL image, a numpy array (h, w, c) / (b, h, w, c), a torch tensor (c, h, w) / "
                    f"(b, c, h, w) in [0, 1], or a non-empty list of one of these; got {type(image).__name__}")


def preprocess_image(image: Any, vae_scale_factor: int, height: int | None = None, width: int | None = None,
                     normalize: bool = True, what: str = "image") -> torch.Tensor:
    """User image(s) -> float32 (b, c, h, w): the reference's VaeImageProcessor.preprocess.

    The size is ``height`` x ``width`` (default: the image's), rounded down to a multiple of ``vae_scale_factor``;
    PIL images are converted to RGB and resized with Lanczos, arrays and tensors with nearest neighbour. With
    ``normalize`` values go from [0, 1] to [-1, 1] (inputs with negative values are taken as [-1, 1] already).
    Tensors with 4 channels are latents and are returned as they are.
    """
    check_image_input(image, what)
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if isinstance(items[0], PIL.Image.Image):
        h, w = _round_size(height or items[0].height, width or items[0].width, vae_scale_factor)
        items = [i.resize((w, h), resample=PIL.Image.Resampling.LANCZOS).convert("RGB") for i in items]
        x = torch.from_numpy(np.stack([np.asarray(i).astype(np.float32) / 255.0 for i in items]).transpose(0, 3, 1, 2).copy())
    else:
        if isinstance(items[0], np.ndarray):
            arr = np.concatenate(items) if items[0].ndim == 4 else np.stack(items)
            arr = arr[..., None] if arr.ndim == 3 else arr
            arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr
            x = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
        else:
            x = torch.cat(items) if items[0].ndim == 4 else torch.stack(items)
            if x.shape[1] == 4:
                return x
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{what}: expected 1 or 3 channels (arrays channels-last, tensors channels-first), got shape {tuple(x.shape)}")
        x = x.float() if x.dtype != torch.uint8 else x.float() / 255.0
        if not torch.isfinite(x).all():
            raise ValueError(f"{what} contains NaN or infinity")
        h, w = _round_size(height or x.shape[2], width or x.shape[3], vae_scale_factor)
        x = F.interpolate(x, size=(h, w))
    if min(x.shape[-2:]) == 0:
        raise ValueError(f"{what} is smaller than {vae_scale_factor} pixels; pass a larger image or height/width")
    return 2.0 * x - 1.0 if normalize and x.min() >= 0 else x


def _round_size(height: int, width: int, factor: int) -> tuple[int, int]:
    return height - height % factor, width - width % factor


def postprocess_image(image: torch.Tensor, output_type: str = "pil") -> Any:
    """Decoded images (b, c, h, w) in [-1, 1] -> ``output_type``: "pt" (b, c, h, w) / "np" (b, h, w, c) in [0, 1], or
    a list of PIL images. "latent" returns the input unchanged."""
    if output_type == "latent":
        return image
    image = (image * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return image
    array = image.cpu().permute(0, 2, 3, 1).float().numpy()
    if output_type == "np":
        return array
    from ..media.frames import to_pil_frames

    return to_pil_frames(array)


# ---------------------------------------------------------------------------------------------- schedule / guidance
def retrieve_timesteps(scheduler, num_inference_steps: int, device, timesteps=None, sigmas=None) -> tuple[torch.Tensor, int]:
    """``scheduler.set_timesteps`` with a step count, or custom ``timesteps`` / ``sigmas`` where the scheduler takes them."""
    check_schedule_inputs(scheduler, timesteps, sigmas)
    if timesteps is None and sigmas is None:
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler.timesteps, num_inference_steps
    name, values = ("timesteps", timesteps) if timesteps is not None else ("sigmas", sigmas)
    scheduler.set_timesteps(**{name: values}, device=device)
    return scheduler.timesteps, len(scheduler.timesteps)


def check_schedule_inputs(scheduler, timesteps, sigmas) -> None:
    """Custom ``timesteps`` or ``sigmas`` (not both), only where ``scheduler.set_timesteps`` takes them."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass custom `timesteps` or `sigmas`, not both")
    for name, values in (("timesteps", timesteps), ("sigmas", sigmas)):
        if values is not None and name not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(scheduler).__name__}.set_timesteps does not take custom {name}; use another scheduler or "
                             "pass num_inference_steps instead")


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0) -> torch.Tensor:
    """Rescale the guided prediction to the text prediction's std (arXiv 2305.08891, section 3.4), mixed by ``guidance_rescale``."""
    dims = list(range(1, noise_pred_text.ndim))
    rescaled = noise_cfg * (noise_pred_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding (len(w), embedding_dim) of guidance scales, for UNets with ``time_cond_proj_dim`` (LCM)."""
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = (w * 1000.0).to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return F.pad(emb, (0, 1)) if embedding_dim % 2 == 1 else emb


def check_image_latents(latents: Any, shape: tuple[int, ...]) -> None:
    check_latents(latents, shape, "(batch, channels, height/8, width/8)", finite=False)


# ---------------------------------------------------------------------------------------------- pipelines
class StableDiffusionBase(PromptEncoderMixin, DiffusionPipeline):
    """Components, safety-checker handling, prompt encoding, latents and decoding shared by the SD image pipelines."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ("safety_checker", "feature_extractor", "image_encoder")
    _exclude_from_cpu_offload = ("safety_checker",)
    _not_loaded_components: ClassVar[tuple[str, ...]] = ("safety_checker",)
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")

    def _register(self, requires_safety_checker: bool, **modules: Any) -> None:
        if modules.get("safety_checker") is not None:
            logger.warning("vidiff does not run safety checkers: %s is kept but generated images are not filtered",
                           type(modules["safety_checker"]).__name__)
        self.register_modules(**modules)
        self.requires_safety_checker = requires_safety_checker
        vae = modules.get("vae")
        self.vae_scale_factor = vae_scale_factor(vae)

    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = self.unet.config.sample_size
        size_h, size_w = (size, size) if isinstance(size, int) else tuple(size)
        if not height or not width:  # the reference replaces both when either is missing
            height, width = size_h * self.vae_scale_factor, size_w * self.vae_scale_factor
        return height, width

    def latent_shape(self, batch_size: int, height: int, width: int, channels: int | None = None) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch_size, channels or self.unet.config.in_channels, int(height) // s, int(width) // s)

    def prepare_latents(self, shape, dtype, device, generator, latents=None) -> torch.Tensor:
        return prepare_noise_latents(self.scheduler, shape, dtype, device, generator, latents)

    def timestep_cond(self, guidance_scale: float, batch: int, device, dtype) -> torch.Tensor | None:
        dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        if dim is None:
            return None
        w = torch.tensor(guidance_scale - 1).repeat(batch)
        return guidance_scale_embedding(w, embedding_dim=dim).to(device=device, dtype=dtype)

    def check_common_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                            guidance_scale, num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs,
                            callback_steps, ip_adapter_image=None, ip_adapter_image_embeds=None) -> None:
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            raise NotImplementedError(f"IP-Adapter inputs (ip_adapter_image / ip_adapter_image_embeds) are not supported by "
                                      f"vidiff's {type(self).__name__}; leave them None")
        check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        check_positive_int("num_inference_steps", num_inference_steps)
        check_guidance("guidance_scale", guidance_scale)
        check_positive_int("num_images_per_prompt", num_images_per_prompt)
        check_output_type(output_type)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs, callback_steps)

    def run(self, state: dict, timesteps, num_inference_steps: int, step: Callable, callback_on_step_end,
            callback_on_step_end_tensor_inputs, callback, callback_steps) -> torch.Tensor:
        state = self.denoise(state, timesteps, step, num_inference_steps=num_inference_steps,
                             callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                             callback=callback, callback_steps=callback_steps or 1)
        return state["latents"]

    def finish(self, latents: torch.Tensor, output_type: str, return_dict: bool):
        """Decode (unless "latent"), convert to ``output_type``; the safety checker is not run (nsfw: None)."""
        if output_type == "latent":
            images = latents
        else:
            images = postprocess_image(self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0], output_type)
        self.maybe_free_model_hooks()
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None) if return_dict else (images, None)


def fix_legacy_scheduler_config(scheduler: Any) -> None:
    """The reference's StableDiffusionPipeline rewrites outdated scheduler configs (steps_offset != 1, clip_sample=True)."""
    config = getattr(scheduler, "config", None)
    if config is None or not hasattr(config, "replace"):
        return
    changes = {}
    if "steps_offset" in config and config["steps_offset"] != 1:
        changes["steps_offset"] = 1
    if "clip_sample" in config and config["clip_sample"] is True:
        changes["clip_sample"] = False
    if changes:
        logger.warning("the scheduler config is outdated; using %s as the reference does (update scheduler_config.json)", changes)
        object.__setattr__(scheduler, "_config", config.replace(**changes))


class StableDiffusionPipeline(StableDiffusionBase):
    """Text -> image with Stable Diffusion 1.x/2.x. The safety checker is not run (vidiff has none)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = True):
        fix_legacy_scheduler_config(scheduler)
        self._register(requires_safety_checker, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                       scheduler=scheduler, safety_checker=safety_checker, feature_extractor=feature_extractor,
                       image_encoder=image_encoder)

    def make_step(self, guidance_scale: float, guidance_rescale: float, do_cfg: bool, timestep_cond, cross_attention_kwargs,
                  step_kwargs) -> Callable:
        def step(i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
            latents = state["latents"]
            x = self.scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
            noise_pred = self.unet(x, t, encoder_hidden_states=state["prompt_embeds"], timestep_cond=timestep_cond,
                                   cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]
            if do_cfg:
                text = noise_pred.chunk(2)[1]
                noise_pred = cfg_combine(noise_pred, guidance_scale)
                if guidance_rescale > 0.0:
                    noise_pred = rescale_noise_cfg(noise_pred, text, guidance_rescale)
            return self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample

        return step

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        **kwargs: Any,
    ):
        """Generate images from ``prompt``; parameters and defaults follow the reference (IP-Adapter inputs are refused).
        Returns :class:`StableDiffusionPipelineOutput` (``nsfw_content_detected`` None: no safety checker is run)."""
        callback, callback_steps = legacy_callback_kwargs(kwargs, type(self).__name__)
        height, width = self.default_size(height, width)
        check_size(height, width, self.vae_scale_factor)
        self.check_common_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps, guidance_scale,
                                 num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, callback_steps,
                                 ip_adapter_image, ip_adapter_image_embeds)
        check_guidance("guidance_rescale", guidance_rescale)
        check_schedule_inputs(self.scheduler, timesteps, sigmas)
        batch = prompt_batch_size(prompt, prompt_embeds) * num_images_per_prompt
        check_generator(generator, batch)
        shape = self.latent_shape(batch, height, width)
        check_image_latents(latents, shape)

        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        latents = self.prepare_latents(shape, prompt_embeds.dtype, device, generator, latents)
        state = {"latents": latents, "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds,
                 "negative_prompt_embeds": negative_prompt_embeds}
        step = self.make_step(guidance_scale, guidance_rescale, do_cfg, self.timestep_cond(guidance_scale, batch, device, latents.dtype),
                              cross_attention_kwargs, self.scheduler_step_kwargs(generator, eta))
        latents = self.run(state, timesteps, num_inference_steps, step, callback_on_step_end, callback_on_step_end_tensor_inputs,
                           callback, callback_steps)
        return self.finish(latents, output_type, return_dict)


class StableDiffusionInstructPix2PixPipeline(StableDiffusionBase):
    """Edit an image by instruction (timbrooks/instruct-pix2pix): the UNet sees the noisy latents and the image's
    latents side by side, guided by text (``guidance_scale``) and by the image (``image_guidance_scale``)."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "image_latents")

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = True):
        self._register(requires_safety_checker, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                       scheduler=scheduler, safety_checker=safety_checker, feature_extractor=feature_extractor,
                       image_encoder=image_encoder)

    def prepare_image_latents(self, image: torch.Tensor, batch: int, dtype, device, do_cfg: bool) -> torch.Tensor:
        """Pixels -> unscaled latent means (4-channel input is taken as latents), tiled to ``batch``; with guidance
        laid out [image, image, zeros] to match the [text, negative, negative] prompts."""
        image = image.to(device=device, dtype=dtype)
        latents = image if image.shape[1] == 4 else self.vae.encode(image).latent_dist.mode()
        if batch > latents.shape[0]:
            latents = torch.cat([latents] * (batch // latents.shape[0]))
        return torch.cat([latents, latents, torch.zeros_like(latents)]) if do_cfg else latents

    def make_step(self, guidance_scale: float, image_guidance_scale: float, do_cfg: bool, cross_attention_kwargs, step_kwargs) -> Callable:
        def step(i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
            latents = state["latents"]
            x = self.scheduler.scale_model_input(torch.cat([latents] * 3) if do_cfg else latents, t)
            x = torch.cat([x, state["image_latents"]], dim=1)
            noise_pred = self.unet(x, t, encoder_hidden_states=state["prompt_embeds"], cross_attention_kwargs=cross_attention_kwargs,
                                   return_dict=False)[0]
            if do_cfg:
                text, image, uncond = noise_pred.chunk(3)
                noise_pred = uncond + guidance_scale * (text - image) + image_guidance_scale * (image - uncond)
            return self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample

        return step

    def _check_image(self, image: Any, batch: int) -> torch.Tensor:
        if image is None:
            raise ValueError("`image` input cannot be undefined: pass the image to edit")
        pixels = preprocess_image(image, self.vae_scale_factor)
        n = pixels.shape[0]
        if n != batch and (n > batch or batch % n):
            raise ValueError(f"got {n} images for a batch of {batch} (prompts x num_images_per_prompt); pass one image, "
                             f"or a number of images that divides {batch}")
        image_channels = 4 if pixels.shape[1] == 4 else self.vae.config.latent_channels
        if self.vae.config.latent_channels + image_channels != self.unet.config.in_channels:
            raise ValueError(f"the UNet takes {self.unet.config.in_channels} input channels but the latents ({self.vae.config.latent_channels}) "
                             f"and the image latents ({image_channels}) give {self.vae.config.latent_channels + image_channels}; "
                             "use an InstructPix2Pix UNet (in_channels = 8)")
        return pixels

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        cross_attention_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """Edit ``image`` following ``prompt``. Guidance runs when ``guidance_scale > 1`` and ``image_guidance_scale >= 1``
        (the reference's rule). The output keeps the image's size (rounded down to a multiple of the VAE factor)."""
        callback, callback_steps = legacy_callback_kwargs(kwargs, type(self).__name__)
        self.check_common_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps, guidance_scale,
                                 num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, callback_steps,
                                 ip_adapter_image, ip_adapter_image_embeds)
        check_guidance("image_guidance_scale", image_guidance_scale)
        batch = prompt_batch_size(prompt, prompt_embeds) * num_images_per_prompt
        check_generator(generator, batch)
        pixels = self._check_image(image, batch)
        s = 1 if pixels.shape[1] == 4 else self.vae_scale_factor  # 4-channel input: latents already
        shape = (batch, self.vae.config.latent_channels, pixels.shape[2] // s, pixels.shape[3] // s)
        check_image_latents(latents, shape)

        device = self._execution_device
        do_cfg = guidance_scale > 1.0 and image_guidance_scale >= 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds)
        text = torch.cat([prompt_embeds, negative_prompt_embeds, negative_prompt_embeds]) if do_cfg else prompt_embeds
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        image_latents = self.prepare_image_latents(pixels, batch, text.dtype, device, do_cfg)
        latents = self.prepare_latents(shape, text.dtype, device, generator, latents)
        state = {"latents": latents, "prompt_embeds": text, "image_latents": image_latents}
        step = self.make_step(guidance_scale, image_guidance_scale, do_cfg, cross_attention_kwargs, self.scheduler_step_kwargs(generator, eta))
        latents = self.run(state, self.scheduler.timesteps, num_inference_steps, step, callback_on_step_end,
                           callback_on_step_end_tensor_inputs, callback, callback_steps)
        return self.finish(latents, output_type, return_dict)
