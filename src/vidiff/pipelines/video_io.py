"""Pipeline-side conversions: user videos -> (b, c, f, h, w) in [-1, 1], and decoded videos -> output_type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
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


def _frame_to_array(frame: Any) -> np.ndarray:
    if isinstance(frame, PIL.Image.Image):
        return np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    raise TypeError(f"video frames must be PIL images, numpy arrays or tensors, got {type(frame).__name__}")


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
    """One clip -> (f, c, h, w) in [-1, 1]."""
    if isinstance(clip, torch.Tensor):
        t = clip.float() if not clip.is_floating_point() else clip
    elif isinstance(clip, np.ndarray):
        if clip.ndim != 4:
            raise ValueError(f"a numpy video must be (frames, height, width, channels), got shape {clip.shape}")
        t = torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))
    else:
        if len(clip) == 0:
            raise ValueError("video is empty: pass at least one frame")
        arrays = [np.asarray(f, dtype=np.float32) if isinstance(f, np.ndarray) else _frame_to_array(f) for f in clip]
        t = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    if t.ndim != 4 or t.shape[0] == 0:
        raise ValueError(f"a video must be (frames, channels, height, width) with at least one frame, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("video contains NaN or infinity")
    if t.shape[1] == 4:  # already latents
        return t
    return t if t.min() < 0 else 2.0 * t - 1.0
