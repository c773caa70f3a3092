"""``vidiff.utils``: the helpers ``diffusers.utils`` offers the guide (load_image, export_to_video, ...)."""

from .media import export_to_gif, export_to_video, load_image, load_video
from .runtime.random import randn_tensor

__all__ = ["export_to_gif", "export_to_video", "load_image", "load_video", "randn_tensor"]
