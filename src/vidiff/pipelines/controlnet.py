"""Stable Diffusion with ControlNet (``StableDiffusionControlNetPipeline``): edges, poses, depth... steer the image.

Usage (the guide's)::

    controlnet = ControlNetModel.from_pretrained("lllyasviel/sd-controlnet-canny")
    pipe = StableDiffusionControlNetPipeline.from_pretrained("runwayml/stable-diffusion-v1-5", controlnet=controlnet,
                                                             safety_checker=None)
    image = pipe("a bird", image=canny_image, controlnet_conditioning_scale=0.8).images[0]

Several ControlNets: pass ``controlnet=[net_a, net_b]`` and ``image=[image_a, image_b]``; their residuals are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..models.controlnet import MultiControlNetModel
from .base import cfg_combine, check_generator, check_size, legacy_callback_kwargs
from .prompt import prompt_batch_size
from .stable_diffusion import (
    StableDiffusionBase,
    check_image_input,
    check_image_latents,
    check_schedule_inputs,
    preprocess_image,
    retrieve_timesteps,
)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class StableDiffusionControlNetPipeline(StableDiffusionBase):
    """Text + control image(s) -> image with SD 1.x/2.x and one or more ControlNets. The safety checker is not run."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "image")

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = True):
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        self._register(requires_safety_checker, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                       controlnet=controlnet, scheduler=scheduler, safety_checker=safety_checker,
                       feature_extractor=feature_extractor, image_encoder=image_encoder)

    @property
    def num_controlnets(self) -> int:
        return len(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else 1

    # ----------------------------------------------------------------- inputs
    def control_images(self, image: Any) -> list:
        """One image input per ControlNet (a list of lists is transposed, as in the reference)."""
        if not isinstance(self.controlnet, MultiControlNetModel):
            return [image]
        if not isinstance(image, (list, tuple)):
            raise TypeError(f"with {self.num_controlnets} ControlNets, `image` must be a list with one control image (or "
                            "batch of images) per ControlNet")
        if image and isinstance(image[0], (list, tuple)):
            image = [list(t) for t in zip(*image)]
        if len(image) != self.num_controlnets:
            raise ValueError(f"got {len(image)} control images for {self.num_controlnets} ControlNets; pass one per ControlNet")
        return list(image)

    def check_control(self, images: list, prompt_batch: int, scale: Any, start: list, end: list) -> None:
        for i, image in enumerate(images):
            n = check_image_input(image, f"image[{i}]" if len(images) > 1 else "image")
            if n != 1 and n != prompt_batch:
                raise ValueError(f"got {n} control images for {prompt_batch} prompts; pass one image or one per prompt")
        scales = _as_list(scale)
        if not isinstance(self.controlnet, MultiControlNetModel) and isinstance(scale, (list, tuple)):
            raise TypeError("for a single ControlNet, `controlnet_conditioning_scale` must be a number")
        if any(isinstance(s, (list, tuple)) for s in scales):
            raise ValueError("a conditioning scale per batch item (e.g. [[1.0, 0.5], [0.2, 0.8]]) is not supported; "
                             "pass one scale per ControlNet")
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in scales):
            raise TypeError(f"controlnet_conditioning_scale must be a number or a list of numbers, got {scale!r}")
        if isinstance(scale, (list, tuple)) and len(scales) != self.num_controlnets:
            raise ValueError(f"controlnet_conditioning_scale has {len(scales)} values for {self.num_controlnets} ControlNets")
        if len(start) != len(end):
            raise ValueError(f"control_guidance_start has {len(start)} values but control_guidance_end has {len(end)}")
        if len(start) != self.num_controlnets:
            raise ValueError(f"control_guidance_start/end have {len(start)} values for {self.num_controlnets} ControlNets")
        for s, e in zip(start, end):
            if not 0.0 <= s < e <= 1.0:
                raise ValueError(f"control guidance start {s} and end {e} must satisfy 0 <= start < end <= 1 "
                                 "(fractions of the denoising steps during which the ControlNet acts)")

    def prepare_image(self, image, width, height, batch_size, num_images_per_prompt, device, dtype,
                      do_classifier_free_guidance=False, guess_mode=False) -> torch.Tensor:
        """Control image(s) -> (batch [x2 with guidance], 3, h, w) in [0, 1], resized to ``height`` x ``width``."""
        image = preprocess_image(image, self.vae_scale_factor, height, width, normalize=False, what="image").float()
        image = image.repeat_interleave(batch_size if image.shape[0] == 1 else num_images_per_prompt, dim=0)
        image = image.to(device=device, dtype=dtype)
        return torch.cat([image] * 2) if do_classifier_free_guidance and not guess_mode else image

    # ----------------------------------------------------------------- step
    def make_step(self, guidance_scale: float, do_cfg: bool, guess_mode: bool, scales: list[list[float]], timestep_cond,
                  cross_attention_kwargs, step_kwargs) -> Callable:
        """ControlNet(s) on the control images (only on the conditional half in guess mode), then the UNet with their
        residuals, guidance and the scheduler step. ``scales[i]`` is each ControlNet's scale at step ``i``."""
        multi = isinstance(self.controlnet, MultiControlNetModel)

        def step(i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
            latents, text = state["latents"], state["prompt_embeds"]
            x = self.scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
            control_x, control_text = (self.scheduler.scale_model_input(latents, t), text.chunk(2)[1]) if guess_mode and do_cfg else (x, text)
            images = state["image"]
            down, mid = self.controlnet(control_x, t, encoder_hidden_states=control_text, controlnet_cond=images,
                                        conditioning_scale=scales[i] if multi else scales[i][0], guess_mode=guess_mode,
                                        return_dict=False)
            if guess_mode and do_cfg:  # the unconditional half gets no control
                down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            noise_pred = self.unet(x, t, encoder_hidden_states=text, timestep_cond=timestep_cond,
                                   cross_attention_kwargs=cross_attention_kwargs, down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid, return_dict=False)[0]
            if do_cfg:
                noise_pred = cfg_combine(noise_pred, guidance_scale)
            return self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample

        return step

    @staticmethod
    def step_scales(num_steps: int, scales: list[float], start: list[float], end: list[float]) -> list[list[float]]:
        """Per step, each ControlNet's scale: 0 outside its [start, end] fraction of the steps (the reference's rule)."""
        out = []
        for i in range(num_steps):
            keep = [1.0 - float(i / num_steps < s or (i + 1) / num_steps > e) for s, e in zip(start, end)]
            out.append([c * k for c, k in zip(scales, keep)])
        return out

    # ----------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
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
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        **kwargs: Any,
    ):
        """Generate images from ``prompt`` steered by the control ``image`` (one per ControlNet). Parameters and defaults
        follow the reference; the output size defaults to the control image's (rounded down to a multiple of the VAE
        factor). IP-Adapter inputs are refused; no safety checker is run (``nsfw_content_detected`` is None)."""
        callback, callback_steps = legacy_callback_kwargs(kwargs, type(self).__name__)
        start, end = _as_list(control_guidance_start), _as_list(control_guidance_end)
        if len(start) == 1 and len(end) == 1:
            start, end = start * self.num_controlnets, end * self.num_controlnets
        elif len(start) == 1:
            start = start * len(end)
        elif len(end) == 1:
            end = end * len(start)
        self.check_common_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps, guidance_scale,
                                 num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, callback_steps,
                                 ip_adapter_image, ip_adapter_image_embeds)
        check_schedule_inputs(self.scheduler, timesteps, sigmas)
        prompt_batch = prompt_batch_size(prompt, prompt_embeds)
        if image is None:
            raise ValueError("pass `image`: the control image (one per ControlNet)")
        images = self.control_images(image)
        self.check_control(images, prompt_batch, controlnet_conditioning_scale, start, end)
        batch = prompt_batch * num_images_per_prompt
        check_generator(generator, batch)
        nets = self.controlnet.nets if isinstance(self.controlnet, MultiControlNetModel) else [self.controlnet]
        guess_mode = guess_mode or nets[0].config.global_pool_conditions
        scales = [float(s) for s in _as_list(controlnet_conditioning_scale)] * (1 if isinstance(controlnet_conditioning_scale, (list, tuple)) else len(nets))

        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        control = [self.prepare_image(im, width, height, batch, num_images_per_prompt, device, self.controlnet.dtype, do_cfg, guess_mode)
                   for im in images]
        height, width = control[0].shape[-2:]
        check_size(int(height), int(width), self.vae_scale_factor)
        shape = self.latent_shape(batch, height, width)
        check_image_latents(latents, shape)

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        latents = self.prepare_latents(shape, prompt_embeds.dtype, device, generator, latents)
        state = {"latents": latents, "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds,
                 "negative_prompt_embeds": negative_prompt_embeds,
                 "image": control if isinstance(self.controlnet, MultiControlNetModel) else control[0]}
        step = self.make_step(guidance_scale, do_cfg, guess_mode, self.step_scales(len(timesteps), scales, start, end),
                              self.timestep_cond(guidance_scale, batch, device, latents.dtype), cross_attention_kwargs,
                              self.scheduler_step_kwargs(generator, eta))
        latents = self.run(state, timesteps, num_inference_steps, step, callback_on_step_end, callback_on_step_end_tensor_inputs,
                           callback, callback_steps)
        return self.finish(latents, output_type, return_dict)
