"""AnimateDiff: an SD 1.5 UNet + motion adapter (``UNetMotionModel``); text -> video and video -> video.

Usage (the guide's)::

    adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2")
    pipe = AnimateDiffPipeline.from_pretrained("emilianJR/epiCRealism", motion_adapter=adapter)
    pipe.scheduler = DDIMScheduler.from_pretrained("emilianJR/epiCRealism", subfolder="scheduler", clip_sample=False,
                                                   timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
    frames = pipe(prompt="a rocket launch", num_frames=16, generator=torch.Generator("cpu").manual_seed(49)).frames[0]

Both pipelines step the scheduler on the whole (b, c, f, h, w) latents (not frame by frame), as the reference does,
so stochastic schedulers (DDIM with eta > 0, Euler ancestral) draw the reference's noise.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..loading.lora import StableDiffusionLoraLoaderMixin
from ..models.unet_2d_condition import UNet2DConditionModel
from ..models.unet_motion import MotionAdapter, UNetMotionModel
from ..runtime.random import randn_tensor
from .base import (
    DiffusionPipeline,
    check_generator,
    check_guidance,
    check_latents,
    check_positive_int,
    check_size,
    legacy_callback_kwargs,
)
from .common import (
    PER_VIDEO_TEXT,
    VideoStagesMixin,
    check_decode_chunk_size,
    decode_latents,
    prepare_noise_latents,
    text_guided_step,
    vae_scale_factor,
)
from .free_init import FreeInitMixin
from .prompt import PromptEncoderMixin, check_prompt_inputs, prompt_batch_size
from .video_io import VideoPipelineOutput, check_output_type, preprocess_video

logger = logging.getLogger("vidiff")


@dataclass
class AnimateDiffPipelineOutput(VideoPipelineOutput):
    """``frames``: np (batch, frames, h, w, c), pt (batch, frames, c, h, w), a list of lists of PIL images, or latents."""


class _AnimateDiffBase(PromptEncoderMixin, VideoStagesMixin, DiffusionPipeline, FreeInitMixin, StableDiffusionLoraLoaderMixin):
    """Components, prompt encoding, the guided UNet step, the (FreeInit) sampling passes and decoding."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ("feature_extractor", "image_encoder", "motion_adapter")
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")
    _output_class = AnimateDiffPipelineOutput

    def __init__(self, vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor=None, image_encoder=None):
        if isinstance(unet, UNet2DConditionModel):  # an SD folder's UNet: insert the adapter's motion modules
            if motion_adapter is None:
                logger.warning("AnimateDiff: no motion_adapter given; the motion modules start from random weights")
            unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
        elif not isinstance(unet, UNetMotionModel):
            raise TypeError(f"unet must be a vidiff UNet2DConditionModel (with motion_adapter=) or UNetMotionModel, got "
                            f"{type(unet).__module__}.{type(unet).__name__}; load it with vidiff's from_pretrained")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=motion_adapter,
                              scheduler=scheduler, feature_extractor=feature_extractor, image_encoder=image_encoder)
        self.vae_scale_factor = vae_scale_factor(vae)

    @classmethod
    def _load_component(cls, folder, name, entry, passed, **kwargs):
        """An SD folder's 2-D UNet with ``motion_adapter=`` given loads straight into the motion UNet (one build, one
        read); __init__ then takes it as it is."""
        adapter = passed.get("motion_adapter")
        if name == "unet" and isinstance(entry, list) and entry[-1] == "UNet2DConditionModel" and isinstance(adapter, MotionAdapter) \
                and adapter.conv_in is None:
            return UNetMotionModel.from_unet2d_pretrained(folder, adapter, subfolder=name, **kwargs)
        return super()._load_component(folder, name, entry, passed, **kwargs)

    # ----------------------------------------------------------------- stages
    def text_conditioning(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_videos_per_prompt,
                          num_frames, do_cfg, clip_skip, device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per-frame text states ((2 if cfg) * b * f, n, d), as the reference gives its UNet and its callbacks; the
        negative embeddings; and the same states once per video ((2 if cfg) * b, n, d), which the UNet takes instead
        (see ``text_guided_step``): its frames then share one set of cross-attention keys and values."""
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_videos_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip)
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds
        return embeds.repeat_interleave(repeats=num_frames, dim=0), negative_prompt_embeds, embeds

    @staticmethod
    def loop_state(latents, text, negative_prompt_embeds, video_text, callback_on_step_end, tensor_inputs) -> dict:
        """The denoising loop's state. The UNet gets the per-video text unless a callback can see (and so change in
        place) ``prompt_embeds``."""
        state = {"latents": latents, "prompt_embeds": text, "negative_prompt_embeds": negative_prompt_embeds}
        if callback_on_step_end is None or "prompt_embeds" not in (tensor_inputs or ()):
            state[PER_VIDEO_TEXT] = (text, video_text)
        return state

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = 16) -> torch.Tensor:
        return decode_latents(self.vae, latents, decode_chunk_size)

    def make_step(self, guidance_scale: float, do_cfg: bool, cross_attention_kwargs, step_kwargs) -> Callable:
        """UNet on [uncond, cond] latents (b, c, f, h, w), guidance, one scheduler step on the whole tensor."""
        return text_guided_step(self, guidance_scale, do_cfg, cross_attention_kwargs,
                                lambda noise_pred, t, latents: self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample)

    def sample(self, state: dict, timesteps: torch.Tensor, num_inference_steps: int, step: Callable, device, generator,
               callbacks: dict, strength: float | None = None) -> torch.Tensor:
        """Run the denoising loop once, or once per FreeInit pass (re-initialising the noise in between).

        ``strength`` (video-to-video): each FreeInit pass trims its new schedule by ``strength`` (the reference's rule).
        """
        try:
            for i in range(self.free_init_iterations()):
                if self.free_init_enabled:
                    state["latents"], timesteps = self._apply_free_init(state["latents"], i, num_inference_steps, device, generator)
                    if strength is not None:
                        timesteps, num_inference_steps = self.get_timesteps(len(timesteps), timesteps, strength)
                state = self.denoise(state, timesteps, step, num_inference_steps=num_inference_steps, **callbacks)
                if self.interrupt:
                    break
        finally:
            self._free_init_initial_noise = None
        return state["latents"]

    # ----------------------------------------------------------------- checks
    def check_common_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale,
                            num_videos_per_prompt, output_type, decode_chunk_size, callback_on_step_end_tensor_inputs,
                            ip_adapter_image, ip_adapter_image_embeds, callback_steps=1) -> None:
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            raise NotImplementedError("IP-Adapter inputs (ip_adapter_image / ip_adapter_image_embeds) are not supported by vidiff's "
                                      "AnimateDiff pipelines; leave them None")
        check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        check_guidance("guidance_scale", guidance_scale)
        check_positive_int("num_videos_per_prompt", num_videos_per_prompt)
        check_output_type(output_type)
        if decode_chunk_size is None:
            raise ValueError("decode_chunk_size must be a positive integer (frames decoded at once), got None")
        check_decode_chunk_size(decode_chunk_size)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs, callback_steps)

    def check_num_frames(self, num_frames: Any) -> None:
        check_positive_int("num_frames", num_frames)
        limit = self.unet.config.motion_max_seq_length
        if num_frames > limit:
            raise ValueError(f"num_frames={num_frames} exceeds this motion adapter's limit of motion_max_seq_length={limit} frames "
                             f"(the length of its positional embeddings); generate at most {limit} frames, or use an adapter "
                             "trained for longer clips.")

    def _sizes(self, height, width) -> tuple[int, int]:
        default = self.unet.config.sample_size * self.vae_scale_factor
        return height or default, width or default

    def _callbacks(self, callback_on_step_end, tensor_inputs, callback=None, callback_steps=1) -> dict:
        return dict(callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
                    callback=callback, callback_steps=callback_steps if callback_steps is not None else 1)


def _resize_pil_frames(video: Any, height: int, width: int) -> Any:
    """PIL frames resized with Lanczos before conversion (the reference's rule for PIL input)."""
    from PIL import Image

    if isinstance(video, Image.Image):
        return video.resize((width, height), resample=Image.Resampling.LANCZOS)
    if isinstance(video, (list, tuple)):
        return [_resize_pil_frames(v, height, width) for v in video]
    return video


def resize_video(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(b, c, f, h, w) -> (b, c, f, height, width), nearest-neighbour (the reference's rule for arrays and tensors)."""
    b, c, f, h, w = video.shape
    if (h, w) == (height, width):
        return video
    frames = torch.nn.functional.interpolate(video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), size=(height, width))
    return frames.reshape(b, f, c, height, width).permute(0, 2, 1, 3, 4)


class AnimateDiffPipeline(_AnimateDiffBase):
    """Text -> video with an SD 1.5 model and an AnimateDiff motion adapter."""

    def prepare_latents(self, shape, dtype, device, generator, latents=None) -> torch.Tensor:
        return prepare_noise_latents(self.scheduler, shape, dtype, device, generator, latents)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_frames: int | None = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int | None = 1,
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
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        decode_chunk_size: int = 16,
        **kwargs: Any,
    ):
        """Generate ``num_frames`` frames from ``prompt``. Defaults follow the reference.

        ``num_videos_per_prompt`` is honoured (the reference resets it to 1): each prompt gives that many videos, in
        the order prompt 0's videos, then prompt 1's. ``cross_attention_kwargs={"scale": s}`` scales loaded LoRAs.
        """
        callback, callback_steps = legacy_callback_kwargs(kwargs, type(self).__name__)
        height, width = self._sizes(height, width)
        check_size(height, width, self.vae_scale_factor)
        self.check_num_frames(num_frames)
        check_positive_int("num_inference_steps", num_inference_steps)
        self.check_common_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale, num_videos_per_prompt,
                                 output_type, decode_chunk_size, callback_on_step_end_tensor_inputs, ip_adapter_image,
                                 ip_adapter_image_embeds, callback_steps)
        batch_size = prompt_batch_size(prompt, prompt_embeds) * num_videos_per_prompt
        check_generator(generator, batch_size)
        shape = self.latent_shape(batch_size, num_frames, height, width)
        check_latents(latents, shape)

        device = self._execution_device
        do_cfg = guidance_scale > 1
        text, negative_prompt_embeds, video_text = self.text_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_videos_per_prompt, num_frames, do_cfg, clip_skip, device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(shape, text.dtype, device, generator, latents)
        state = self.loop_state(latents, text, negative_prompt_embeds, video_text, callback_on_step_end, callback_on_step_end_tensor_inputs)
        step = self.make_step(guidance_scale, do_cfg, cross_attention_kwargs, self.scheduler_step_kwargs(generator, eta))
        latents = self.sample(state, self.scheduler.timesteps, num_inference_steps, step, device, generator,
                              self._callbacks(callback_on_step_end, callback_on_step_end_tensor_inputs, callback, callback_steps))
        return self.finish(latents, output_type, return_dict, decode_chunk_size)


class AnimateDiffVideoToVideoPipeline(_AnimateDiffBase):
    """Video + text -> video: the input clip is encoded, noised to ``strength`` and denoised with the motion UNet."""

    def get_timesteps(self, num_inference_steps: int, timesteps: torch.Tensor, strength: float) -> tuple[torch.Tensor, int]:
        """The last ``strength`` part of the schedule (no begin index is set, as in the reference)."""
        init = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init, 0)
        return timesteps[t_start * self.scheduler.order :], num_inference_steps - t_start

    def set_schedule(self, num_inference_steps: int, timesteps, sigmas, device) -> tuple[torch.Tensor, int]:
        """``scheduler.set_timesteps`` with a step count, or custom ``timesteps`` / ``sigmas`` where it takes them."""
        if timesteps is None and sigmas is None:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            return self.scheduler.timesteps, num_inference_steps
        name = "timesteps" if timesteps is not None else "sigmas"
        if name not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(self.scheduler).__name__}.set_timesteps does not take custom {name}; use another scheduler "
                             f"or pass num_inference_steps instead")
        self.scheduler.set_timesteps(**{name: timesteps if timesteps is not None else sigmas}, device=device)
        return self.scheduler.timesteps, len(self.scheduler.timesteps)

    def encode_video(self, video: torch.Tensor, generator, decode_chunk_size: int = 16) -> torch.Tensor:
        """One clip (f, c, h, w) in [-1, 1] -> latents (f, c', h', w') sampled ``decode_chunk_size`` frames at a time."""
        chunks = [self.vae.encode(video[i : i + decode_chunk_size]).latent_dist.sample(generator)
                  for i in range(0, len(video), decode_chunk_size)]
        return torch.cat(chunks)

    def prepare_latents(self, video: torch.Tensor, timestep: torch.Tensor, dtype, device, generator, decode_chunk_size: int) -> torch.Tensor:
        """(b, f, c, h, w) pixels -> noised latents (b, c', f, h', w'): encode, scale, add noise at ``timestep``."""
        upcast = getattr(self.vae.config, "force_upcast", False) and self.vae.dtype != torch.float32
        if upcast:
            video = video.float()
            self.vae.to(dtype=torch.float32)
        try:
            gens = generator if isinstance(generator, list) else [generator] * len(video)
            init = torch.cat([self.encode_video(v, g, decode_chunk_size).unsqueeze(0) for v, g in zip(video, gens)])
        finally:
            if upcast:
                self.vae.to(dtype)
        init = self.vae.config.scaling_factor * init.to(dtype)
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(init, noise, timestep).permute(0, 2, 1, 3, 4)

    def _video_tensor(self, video: Any, height: int, width: int, batch_size: int, per_prompt: int) -> torch.Tensor:
        """User video(s) -> (b, f, c, h, w) in [-1, 1] at ``height`` x ``width``, one clip per generated video."""
        video_t = resize_video(preprocess_video(_resize_pil_frames(video, height, width)), height, width)  # b c f h w
        if video_t.shape[1] != 3:
            raise ValueError(f"video frames must be RGB (3 channels), got {video_t.shape[1]}; to start from latents pass `latents=`")
        self.check_num_frames(int(video_t.shape[2]))
        n = video_t.shape[0]
        if n == 1 and batch_size > 1:
            video_t = video_t.repeat(batch_size, 1, 1, 1, 1)
        elif n * per_prompt == batch_size and per_prompt > 1:
            video_t = video_t.repeat_interleave(per_prompt, dim=0)
        elif n != batch_size:
            raise ValueError(f"got {n} videos for {batch_size // per_prompt} prompts x {per_prompt} videos per prompt; pass one "
                             "video, one per prompt, or one per generated video")
        return video_t.permute(0, 2, 1, 3, 4)

    def check_strength(self, strength: Any, num_inference_steps: int, enforce_inference_steps: bool, timesteps, sigmas) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
        if timesteps is not None and sigmas is not None:
            raise ValueError("pass custom `timesteps` or `sigmas`, not both")
        n = len(timesteps if timesteps is not None else sigmas) if (timesteps is not None or sigmas is not None) else num_inference_steps
        if enforce_inference_steps and strength == 0:
            raise ValueError("strength=0 with enforce_inference_steps=True leaves no denoising step; raise strength")
        if not enforce_inference_steps and int(n * strength) < 1:
            raise ValueError(f"strength={strength} with {n} inference steps leaves no denoising step; raise strength or "
                             "num_inference_steps so that their product is at least 1")

    def schedule(self, num_inference_steps, enforce_inference_steps, timesteps, sigmas, strength, device):
        """(timesteps, steps) to run: the last ``strength`` of the schedule, or (``enforce_inference_steps``) exactly
        ``num_inference_steps`` steps from a schedule of ``num_inference_steps / strength``."""
        if not enforce_inference_steps:
            ts, n = self.set_schedule(num_inference_steps, timesteps, sigmas, device)
            return self.get_timesteps(n, ts, strength)
        ts, _ = self.set_schedule(int(num_inference_steps / strength), timesteps, sigmas, device)
        return ts[-num_inference_steps:], num_inference_steps

    @torch.no_grad()
    def __call__(
        self,
        video: Any = None,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        enforce_inference_steps: bool = False,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        strength: float = 0.8,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int | None = 1,
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
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        decode_chunk_size: int = 16,
    ):
        """Re-render ``video`` guided by ``prompt``: encode it, noise it to ``strength``, denoise.

        The frames are resized to ``height`` x ``width`` (default: the UNet's sample size, 512 for SD 1.5), PIL frames
        with Lanczos and arrays/tensors with nearest-neighbour, as the reference's video processor does.
        ``latents`` (b, c, f, h/8, w/8) replaces ``video``: taken as already noised, or noised to the first timestep
        with ``enforce_inference_steps=True``.
        """
        height, width = self._sizes(height, width)
        check_size(height, width, self.vae_scale_factor)
        check_positive_int("num_inference_steps", num_inference_steps)
        self.check_strength(strength, num_inference_steps, enforce_inference_steps, timesteps, sigmas)
        self.check_common_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale, num_videos_per_prompt,
                                 output_type, decode_chunk_size, callback_on_step_end_tensor_inputs, ip_adapter_image, ip_adapter_image_embeds)
        if (video is None) == (latents is None):
            raise ValueError("pass exactly one of `video` (the frames to re-render) and `latents`")
        batch_size = prompt_batch_size(prompt, prompt_embeds) * num_videos_per_prompt
        check_generator(generator, batch_size)
        video_t = self._video_tensor(video, height, width, batch_size, num_videos_per_prompt) if video is not None else None
        if latents is not None:
            if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
                raise ValueError("latents must be a 5-D tensor (batch, channels, frames, height/8, width/8)")
            self.check_num_frames(int(latents.shape[2]))
            s = self.vae_scale_factor
            check_latents(latents, (batch_size, self.unet.config.in_channels, latents.shape[2], height // s, width // s))

        device, dtype = self._execution_device, self.dtype
        ts, num_inference_steps = self.schedule(num_inference_steps, enforce_inference_steps, timesteps, sigmas, strength, device)
        latent_timestep = ts[:1].repeat(batch_size)
        if video_t is not None:
            latents = self.prepare_latents(video_t.to(device=device, dtype=dtype), latent_timestep, dtype, device, generator, decode_chunk_size)
        else:
            latents = latents.to(device, dtype=dtype)
            if enforce_inference_steps:
                noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
                latents = self.scheduler.add_noise(latents, noise, latent_timestep)

        do_cfg = guidance_scale > 1
        text, negative_prompt_embeds, video_text = self.text_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_videos_per_prompt, latents.shape[2], do_cfg, clip_skip,
            device)
        state = self.loop_state(latents, text, negative_prompt_embeds, video_text, callback_on_step_end, callback_on_step_end_tensor_inputs)
        step = self.make_step(guidance_scale, do_cfg, cross_attention_kwargs, self.scheduler_step_kwargs(generator, eta))
        latents = self.sample(state, ts, num_inference_steps, step, device, generator,
                              self._callbacks(callback_on_step_end, callback_on_step_end_tensor_inputs), strength=strength)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)
