"""Pipeline-side conversions: user videos -> (b, c, f, h, w) in [-1, 1], and decoded videos -> output_type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

OUTPUT_TYPES = ("np", "pt", "pil", "latent")


@dataclass
class VideoPipelineOutput:
    """``frames``: np (batch, frames, h, w, c) in [0, 1], pt (batch, frames, c, h, w), or a list of lists of PIL images."""

    frames: Any

    def __getitem__(self, i: int) -> Any:  # tuple-style access, like the reference's BaseOutput
        return (self.frames,)[i]


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")


def postprocess_video(video: torch.Tensor, output_type: str = "np") -> Any:
    """(b, c, f, h, w) in [-1, 1] -> the requested output type (the reference's VideoProcessor rules)."""
    if output_type == "latent":
        return video
    video = (video / 2 + 0.5).clamp(0, 1)
    video = video.permute(0, 2, 1, 3, 4)  # b f c h w
    if output_type == "pt":
        return video
    frames = video.cpu().permute(0, 1, 3, 4, 2).float().numpy()  # b f h w c
    if output_type == "np":
        return frames
    from ..media.frames import to_pil_frames

    return [to_pil_frames(clip) for clip in frames]


def preprocess_video(video: Any) -> torch.Tensor:
    """A video (list of PIL frames, list of HxWxC arrays in [0, 1], (f, h, w, c) array, (f, c, h, w) tensor, or a batch
    of these) -> (b, c, f, h, w) float tensor in [-1, 1]. Tensors already in [-1, 1] are kept (reference rule)."""
    if isinstance(video, (list, tuple)) and len(video) == 0:
        raise ValueError("video is empty: pass at least one frame")
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 5:
        clips = list(video)
    elif isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 4:
        clips = [video]
    elif isinstance(video, (list, tuple)) and isinstance(video[0], (list, tuple)):
        clips = list(video)
    elif isinstance(video, (list, tuple)):
        clips = [video]
    else:
        raise TypeError(f"video must be a list of frames (PIL / numpy), a 4-D or 5-D numpy array or tensor; got {type(video).__name__}")
    tensors = [_clip_to_tensor(c) for c in clips]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"all videos in a batch must have the same shape, got {sorted(shapes)}")
    return torch.stack(tensors).permute(0, 2, 1, 3, 4)  # b c f h w


def _clip_to_tensor(clip: Any) -> torch.Tensor:
    """One clip -> (f, c, h, w) in [-1, 1]. Two reference rules come first: a 4-channel (f, 4, h, w) tensor is
    latents, and float frames with negative values are already in [-1, 1]; the rest goes through
    media.frames_to_tensor (PIL / uint8 / [0, 1] floats, validated there)."""
    from ..media.frames import frames_to_tensor

    if isinstance(clip, np.ndarray) and clip.dtype.kind == "f" and clip.ndim == 4 and clip.size and clip.min() < 0:
        clip = torch.from_numpy(clip).permute(0, 3, 1, 2)  # f h w c -> f c h w
    if isinstance(clip, torch.Tensor) and clip.is_floating_point() and clip.ndim == 4 and clip.numel():
        if clip.shape[1] == 4 or clip.min() < 0:
            if not torch.isfinite(clip).all():
                raise ValueError("video contains NaN or infinity")
            return clip.float()
    return frames_to_tensor(clip, (-1.0, 1.0), what="video")
