"""Images and videos in and out: drop-ins for diffusers' ``load_image``, ``load_video``, ``export_to_video``,
``export_to_gif``, plus the frame <-> array <-> tensor conversions the pipelines share."""

from .export import export_to_gif, export_to_video
from .files import MediaError, MediaFileNotFoundError
from .frames import (
    Frames,
    as_frame_array,
    frames_to_tensor,
    frames_to_uint8,
    quantize,
    tensor_to_frames,
    to_pil_frames,
)
from .image import load_image, to_rgb
from .video import VideoFrames, load_video

__all__ = [
    "Frames",
    "MediaError",
    "MediaFileNotFoundError",
    "VideoFrames",
    "as_frame_array",
    "export_to_gif",
    "export_to_video",
    "frames_to_tensor",
    "frames_to_uint8",
    "load_image",
    "load_video",
    "quantize",
    "tensor_to_frames",
    "to_pil_frames",
    "to_rgb",
]
