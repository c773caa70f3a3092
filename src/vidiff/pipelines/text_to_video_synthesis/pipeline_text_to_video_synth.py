"""ModelScope / Zeroscope: TextToVideoSDPipeline and VideoToVideoSDPipeline (UNet3DConditionModel + AutoencoderKL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...runtime.random import randn_tensor
from ..base import (
    DiffusionPipeline,
    check_generator,
    check_guidance,
    check_latents,
    check_positive_int,
    check_size,
)
from ..common import (
    VideoStagesMixin,
    batch_to_frames,
    check_decode_chunk_size,
    decode_latents,
    frames_to_batch,
    prepare_noise_latents,
    scheduler_step_frames,
    text_guided_step,
    vae_scale_factor,
)
from ..prompt import PromptEncoderMixin, check_prompt_inputs, prompt_batch_size
from ..video_io import VideoPipelineOutput, check_output_type, preprocess_video

TextToVideoSDPipelineOutput = VideoPipelineOutput


class TextToVideoSDPipeline(PromptEncoderMixin, VideoStagesMixin, DiffusionPipeline):
    """Text -> video with a UNet3DConditionModel (damo-vilab/text-to-video-ms-1.7b, cerspense/zeroscope_v2_576w)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = vae_scale_factor(vae)

    # ----------------------------------------------------------------- stages
    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        if lora_scale is not None:
            raise NotImplementedError("LoRA scaling of the text encoder is not supported by this pipeline yet")
        return super().encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
                                     prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip)

    def prepare_latents(self, shape, dtype, device, generator, latents=None) -> torch.Tensor:
        return prepare_noise_latents(self.scheduler, shape, dtype, device, generator, latents)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        return decode_latents(self.vae, latents, decode_chunk_size)

    def make_step(self, guidance_scale: float, do_cfg: bool, cross_attention_kwargs, step_kwargs) -> Callable:
        """The per-step function the shared loop runs: UNet on [uncond, cond], guidance, frame-wise scheduler step."""
        return text_guided_step(self, guidance_scale, do_cfg, cross_attention_kwargs,
                                lambda noise_pred, t, latents: scheduler_step_frames(self.scheduler, noise_pred, t, latents, step_kwargs))

    def check_common_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                            guidance_scale, output_type, decode_chunk_size, callback_on_step_end_tensor_inputs, callback_steps):
        check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        check_positive_int("num_inference_steps", num_inference_steps)
        check_guidance("guidance_scale", guidance_scale)
        check_output_type(output_type)
        check_decode_chunk_size(decode_chunk_size)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs, callback_steps)

    def run(self, latents, prompt_embeds, negative_prompt_embeds, timesteps, num_inference_steps, guidance_scale,
            do_cfg, generator, eta, cross_attention_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs,
            callback, callback_steps) -> torch.Tensor:
        state = {
            "latents": latents,
            "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
        }
        step = self.make_step(guidance_scale, do_cfg, cross_attention_kwargs, self.scheduler_step_kwargs(generator, eta))
        state = self.denoise(state, timesteps, step, num_inference_steps=num_inference_steps,
                             callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                             callback=callback, callback_steps=callback_steps)
        return state["latents"]

    # ----------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 16,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        decode_chunk_size: int | None = None,
    ):
        """Generate a video from text. Defaults follow the reference; ``decode_chunk_size`` (frames decoded at once,
        None = all) and ``callback_on_step_end`` are vidiff additions."""
        if height is None or width is None:
            if self.unet.config.sample_size is None:
                raise ValueError("this UNet's config has no sample_size: pass height and width")
            default = self.unet.config.sample_size * self.vae_scale_factor
            height = default if height is None else height
            width = default if width is None else width
        check_size(height, width, self.vae_scale_factor)
        check_positive_int("num_frames", num_frames)
        self.check_common_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                                 guidance_scale, output_type, decode_chunk_size, callback_on_step_end_tensor_inputs, callback_steps)
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        check_generator(generator, batch_size)
        shape = self.latent_shape(batch_size, num_frames, height, width)
        check_latents(latents, shape)

        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, 1, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(shape, prompt_embeds.dtype, device, generator, latents)
        latents = self.run(latents, prompt_embeds, negative_prompt_embeds, self.scheduler.timesteps, num_inference_steps,
                           guidance_scale, do_cfg, generator, eta, cross_attention_kwargs, callback_on_step_end,
                           callback_on_step_end_tensor_inputs, callback, callback_steps)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)


class VideoToVideoSDPipeline(TextToVideoSDPipeline):
    """Video + text -> refined video (cerspense/zeroscope_v2_XL upscaling of a zeroscope_v2_576w clip)."""

    def get_timesteps(self, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
        init = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init, 0)
        order = self.scheduler.order
        timesteps = self.scheduler.timesteps[t_start * order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * order)
        return timesteps, num_inference_steps - t_start

    def encode_video(self, video: torch.Tensor, dtype, device, generator) -> torch.Tensor:
        """(b c f h w) pixels -> (b f) c h w scaled latents; 4-channel input is taken as latents already (reference rule).

        With a list of generators, video j is encoded with generator j."""
        b = video.shape[0]
        frames = frames_to_batch(video.to(device=device, dtype=dtype))
        if frames.shape[1] == 4:
            return frames
        if isinstance(generator, list) and len(generator) > 1:
            per_video = frames.chunk(b)
            latents = torch.cat([self.vae.encode(x).latent_dist.sample(g) for x, g in zip(per_video, generator)])
        else:
            latents = self.vae.encode(frames).latent_dist.sample(generator)
        return self.vae.config.scaling_factor * latents

    def prepare_video_latents(self, video, timestep, dtype, device, generator) -> torch.Tensor:
        init = self.encode_video(video, dtype, device, generator)
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return batch_to_frames(self.scheduler.add_noise(init, noise, timestep), video.shape[0])

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        video: Any = None,
        strength: float = 0.6,
        num_inference_steps: int = 50,
        guidance_scale: float = 15.0,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        decode_chunk_size: int | None = None,
    ):
        """Refine ``video`` guided by ``prompt``: the video is encoded, noised to ``strength`` and denoised.

        ``latents`` (vidiff): start from these already-noised latents (b, c, f, h/8, w/8) instead of encoding ``video``
        (the reference accepts the argument but ignores it)."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
        if video is None and latents is None:
            raise ValueError("pass `video` (the frames to refine)")
        self.check_common_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                                 guidance_scale, output_type, decode_chunk_size, callback_on_step_end_tensor_inputs, callback_steps)
        if int(num_inference_steps * strength) < 1:
            raise ValueError(f"strength={strength} with num_inference_steps={num_inference_steps} leaves no denoising step; "
                             "raise strength or num_inference_steps so that their product is at least 1")
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        check_generator(generator, batch_size)
        video_t = preprocess_video(video) if video is not None else None
        if video_t is not None:
            check_size(video_t.shape[-2], video_t.shape[-1], 1 if video_t.shape[1] == 4 else self.vae_scale_factor)
            if video_t.shape[0] == 1 and batch_size > 1:
                video_t = video_t.repeat(batch_size, 1, 1, 1, 1)
            elif video_t.shape[0] != batch_size:
                raise ValueError(f"got {video_t.shape[0]} videos for {batch_size} prompts; pass one video or one per prompt")
        if latents is not None:
            check_latents(latents, tuple(latents.shape) if video_t is None or video_t.shape[1] == 4 else
                          self.latent_shape(video_t.shape[0], video_t.shape[2], video_t.shape[3], video_t.shape[4]))

        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, 1, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength)
        if latents is None:
            latent_timestep = timesteps[:1]
            latents = self.prepare_video_latents(video_t, latent_timestep, prompt_embeds.dtype, device, generator)
        else:
            latents = latents.to(device=device, dtype=prompt_embeds.dtype)
        latents = self.run(latents, prompt_embeds, negative_prompt_embeds, timesteps, num_inference_steps,
                           guidance_scale, do_cfg, generator, eta, cross_attention_kwargs, callback_on_step_end,
                           callback_on_step_end_tensor_inputs, callback, callback_steps)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)
