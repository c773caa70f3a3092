"""Text2Video-Zero video pipelines: the reference's ControlNet and InstructPix2Pix recipes as one call each.

The reference offers these only as recipes (an image pipeline, ``CrossFrameAttnProcessor`` set by hand, shared
latents built by hand, one prompt per frame). These classes do the recipe for the user and give the recipe's frames
for the same seed; ``chunk_size`` additionally splits long videos into chunks that each start with the first frame
(the anchor every frame attends to), as the original Text2Video-Zero code does::

    from vidiff import ControlNetModel, load_video
    from vidiff.media.control import canny_edges

    controlnet = ControlNetModel.from_pretrained("lllyasviel/sd-controlnet-canny")
    pipe = TextToVideoZeroControlNetPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", controlnet=controlnet)
    edges = canny_edges(load_video("in.mp4")[:8])
    video = pipe(prompt="Darth Vader dancing in a desert", control_frames=edges, generator=g).frames[0]

    pipe = TextToVideoZeroPix2PixPipeline.from_pretrained("timbrooks/instruct-pix2pix")
    video = pipe(prompt="make it Van Gogh Starry Night style", video=load_video("in.mp4")[:8]).frames[0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..layers.cross_frame import CrossFrameAttnProcessor
from ..runtime.random import randn_tensor
from .base import check_generator
from .controlnet import StableDiffusionControlNetPipeline
from .stable_diffusion import StableDiffusionInstructPix2PixPipeline
from .video_io import VideoPipelineOutput, check_output_type

__all__ = ["TextToVideoZeroControlNetPipeline", "TextToVideoZeroPix2PixPipeline", "chunk_frame_ids"]


# ---------------------------------------------------------------------------------------------- helpers
def chunk_frame_ids(num_frames: int, chunk_size: int | None) -> list[list[int]]:
    """Frame ids per call: all frames at once, or chunks of ``chunk_size`` that start with frame 0 (the anchor, whose
    output is dropped): ``[0, 0, 1, 2], [0, 3, 4, 5], ...`` for chunk_size 4 (the original code's split)."""
    if chunk_size is None or chunk_size >= num_frames + 1:
        return [list(range(num_frames))]
    starts = list(range(0, num_frames, chunk_size - 1))
    ends = starts[1:] + [num_frames]
    return [[0] + list(range(s, e)) for s, e in zip(starts, ends)]


def video_frames(video: Any, what: str) -> list:
    """A video (list of PIL frames / arrays / tensors, an (f, h, w, c) array or an (f, c, h, w) tensor) -> list of frames,
    all of one size."""
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 4:
        frames = list(video)
    elif isinstance(video, (list, tuple)) and len(video) and all(isinstance(f, (PIL.Image.Image, np.ndarray, torch.Tensor)) for f in video):
        frames = list(video)
    else:
        raise TypeError(f"{what} must be a non-empty list of frames (PIL images, (h, w, c) arrays or (c, h, w) tensors), "
                        f"an (f, h, w, c) array or an (f, c, h, w) tensor; got {type(video).__name__}")
    sizes = {_frame_size(f) for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"{what}: all frames must have one size, got (width, height) sizes {sorted(sizes)}; resize them first")
    return frames


def _frame_size(frame: Any) -> tuple[int, int]:
    if isinstance(frame, PIL.Image.Image):
        return frame.size
    if isinstance(frame, torch.Tensor):
        return int(frame.shape[-1]), int(frame.shape[-2])
    return int(frame.shape[1]), int(frame.shape[0])


def check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 2):
        raise ValueError(f"chunk_size must be None (all frames in one call) or an integer >= 2 (the anchor frame plus at "
                         f"least one new frame per call), got {chunk_size!r}")


def check_video_prompt(prompt: Any, num_frames: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * num_frames
    if isinstance(prompt, list) and len(prompt) == num_frames and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise ValueError(f"prompt must be a str (used for every frame) or a list of {num_frames} str, one per frame; got {prompt!r}")


@contextlib.contextmanager
def cross_frame_attention(models_and_batch: list[tuple[Any, int]]) -> Iterator[None]:
    """Set CrossFrameAttnProcessor(batch_size) on each model for the duration, then restore its processors."""
    saved = [(model, model.attn_processors) for model, _ in models_and_batch]
    try:
        for model, batch_size in models_and_batch:
            model.set_attn_processor(CrossFrameAttnProcessor(batch_size=batch_size))
        yield
    finally:
        for model, processors in saved:
            model.set_attn_processor(processors)


class _ChunkedVideoMixin:
    """Run the parent image pipeline per chunk of frames and assemble a video output (``.frames``, batch of one)."""

    def run_chunks(self, ids_per_call: list[list[int]], call: Callable[[list[int]], Any], generator) -> Any:
        state = generator.get_state() if isinstance(generator, torch.Generator) else None
        outputs = []
        for n, ids in enumerate(ids_per_call):
            if state is not None:
                generator.set_state(state)  # every chunk starts from the same random state (the original re-seeds)
            out = call(ids)
            outputs.append(out if len(ids_per_call) == 1 else out[1:])  # drop the anchor's copy
        if isinstance(outputs[0], torch.Tensor):
            return torch.cat(outputs)
        return np.concatenate(outputs)

    @staticmethod
    def to_video(frames: Any, output_type: str, return_dict: bool):
        """(f, h, w, 3) np frames or (f, c, h, w) latents -> a batch of one video in ``output_type``."""
        if output_type == "latent":
            video = frames.permute(1, 0, 2, 3)[None]  # 1 c f h w
        elif output_type == "pt":
            video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]  # 1 f c h w
        elif output_type == "pil":
            from ..media.frames import to_pil_frames

            video = [to_pil_frames(frames)]
        else:
            video = frames[None]  # 1 f h w c
        return VideoPipelineOutput(frames=video) if return_dict else (video,)


# ---------------------------------------------------------------------------------------------- ControlNet
class TextToVideoZeroControlNetPipeline(_ChunkedVideoMixin, StableDiffusionControlNetPipeline):
    """Control frames (pose, edges, ...) + text -> video: one latent shared by every frame, cross-frame attention in the
    UNet and the ControlNet(s). Same components and loading as StableDiffusionControlNetPipeline."""

    def shared_latents(self, num_frames: int, height: int, width: int, generator, latents) -> torch.Tensor:
        """(1, c, h/8, w/8) noise (drawn, or given) repeated for every frame, as the reference recipe builds it."""
        shape = self.latent_shape(1, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        elif not isinstance(latents, torch.Tensor) or tuple(latents.shape) not in (shape, (num_frames, *shape[1:])):
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be {shape} (shared by every frame) or {(num_frames, *shape[1:])} (one per frame), got {got}")
        return latents.repeat(num_frames, 1, 1, 1) if latents.shape[0] == 1 else latents

    def _controls(self, control_frames: Any) -> list[list]:
        """One frame list per ControlNet, all of one length."""
        if self.num_controlnets == 1:
            return [video_frames(control_frames, "control_frames")]
        if not isinstance(control_frames, (list, tuple)) or len(control_frames) != self.num_controlnets:
            raise ValueError(f"with {self.num_controlnets} ControlNets pass control_frames as a list of {self.num_controlnets} videos")
        videos = [video_frames(v, f"control_frames[{i}]") for i, v in enumerate(control_frames)]
        if len({len(v) for v in videos}) != 1:
            raise ValueError(f"each ControlNet needs one control frame per video frame; got {[len(v) for v in videos]} frames")
        return videos

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        control_frames: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        chunk_size: int | None = None,
        **kwargs: Any,
    ):
        """A video of ``len(control_frames)`` frames following the control frames. ``latents``: (1, c, h/8, w/8) shared
        noise (default: drawn from ``generator``). Other keywords (clip_skip, cross_attention_kwargs, callbacks, ...)
        go to StableDiffusionControlNetPipeline for each chunk. Output ``.frames``: a batch of one video."""
        if control_frames is None:
            raise ValueError("pass control_frames: one control image per video frame (e.g. canny_edges(load_video(...)))")
        controls = self._controls(control_frames)
        num_frames = len(controls[0])
        prompts = check_video_prompt(prompt, num_frames)
        check_chunk_size(chunk_size)
        check_output_type(output_type)
        check_generator(generator, 1)
        generator = generator[0] if isinstance(generator, list) else generator
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError("negative_prompt must be a str (used for every frame)")
        first = controls[0][0]
        w0, h0 = _frame_size(first)
        height, width = height or h0, width or w0
        latents = self.shared_latents(num_frames, height - height % self.vae_scale_factor,
                                      width - width % self.vae_scale_factor, generator, latents)
        do_cfg = guidance_scale > 1.0
        control_batch = 2 if do_cfg and not (guess_mode or self._global_pool()) else 1
        nets = list(self.controlnet.nets) if self.num_controlnets > 1 else [self.controlnet]

        def call(ids: list[int]):
            image = [[v[i] for i in ids] for v in controls] if self.num_controlnets > 1 else [controls[0][i] for i in ids]
            return super(TextToVideoZeroControlNetPipeline, self).__call__(
                prompt=[prompts[i] for i in ids], image=image, height=height, width=width,
                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                negative_prompt=[negative_prompt] * len(ids) if negative_prompt is not None else None, eta=eta,
                generator=generator, latents=latents[ids], output_type="latent" if output_type == "latent" else "np",
                controlnet_conditioning_scale=controlnet_conditioning_scale, guess_mode=guess_mode,
                control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end, **kwargs).images

        with cross_frame_attention([(self.unet, 2 if do_cfg else 1)] + [(net, control_batch) for net in nets]):
            frames = self.run_chunks(chunk_frame_ids(num_frames, chunk_size), call, generator)
        return self.to_video(frames, output_type, return_dict)

    def _global_pool(self) -> bool:
        nets = self.controlnet.nets if self.num_controlnets > 1 else [self.controlnet]
        return bool(nets[0].config.global_pool_conditions)


# ---------------------------------------------------------------------------------------------- InstructPix2Pix
class TextToVideoZeroPix2PixPipeline(_ChunkedVideoMixin, StableDiffusionInstructPix2PixPipeline):
    """Edit a video by instruction (timbrooks/instruct-pix2pix) with cross-frame attention, frame by frame in one call.
    Same components and loading as StableDiffusionInstructPix2PixPipeline."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        video: Any = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        negative_prompt: str | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        chunk_size: int | None = None,
        **kwargs: Any,
    ):
        """The edited video (``.frames``: a batch of one). ``latents``: (f, c, h/8, w/8) starting noise (default: drawn
        from ``generator`` per call). Other keywords go to StableDiffusionInstructPix2PixPipeline for each chunk."""
        if video is None:
            raise ValueError("pass video: the frames to edit (e.g. load_video('in.mp4'))")
        frames = video_frames(video, "video")
        num_frames = len(frames)
        prompts = check_video_prompt(prompt, num_frames)
        check_chunk_size(chunk_size)
        check_output_type(output_type)
        check_generator(generator, 1)
        generator = generator[0] if isinstance(generator, list) else generator
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError("negative_prompt must be a str (used for every frame)")
        if latents is not None and (not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[0] != num_frames):
            raise ValueError(f"latents must be a (frames={num_frames}, c, h/8, w/8) tensor, one noise per frame")
        do_cfg = guidance_scale > 1.0 and image_guidance_scale >= 1.0

        def call(ids: list[int]):
            return super(TextToVideoZeroPix2PixPipeline, self).__call__(
                prompt=[prompts[i] for i in ids], image=[frames[i] for i in ids], num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale,
                negative_prompt=[negative_prompt] * len(ids) if negative_prompt is not None else None, eta=eta,
                generator=generator, latents=latents[ids] if latents is not None else None,
                output_type="latent" if output_type == "latent" else "np", **kwargs).images

        with cross_frame_attention([(self.unet, 3 if do_cfg else 1)]):
            out = self.run_chunks(chunk_frame_ids(num_frames, chunk_size), call, generator)
        return self.to_video(out, output_type, return_dict)
