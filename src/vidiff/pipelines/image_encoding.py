"""Conditioning images: user input -> pixels, CLIP preprocessing (without torchvision) and CLIP image embeddings.

Stages, each usable on its own (Stable Video Diffusion uses them all; I2VGen-XL shares the input handling,
the normalisation and the embedding stage):

- :func:`load_images` -- PIL image(s), path(s) / URL(s), a tensor or an array -> a list of RGB PIL images or one
  ``(b, 3, h, w)`` float tensor in [0, 1]. Modes are converted as :func:`vidiff.media.load_image` documents:
  transparency composited over white, greyscale replicated to RGB, 16-bit greyscale scaled to 8 bits.
- :func:`vae_pixels` -- those images resized to the video size and scaled to [-1, 1] (the VAE's input).
- :func:`resize_with_antialiasing` -- Gaussian blur then bicubic resize (the reference's resize to 224).
- :func:`clip_normalize` / :func:`clip_pixel_values` -- the CLIP encoder's input.
- :func:`image_embeddings` -- ``image_encoder(pixels).image_embeds`` as a one-token context, repeated per
  video, with zero embeddings in front for classifier-free guidance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..media.image import WHITE, load_image, to_rgb

ImageInput = Union[PIL.Image.Image, str, os.PathLike, torch.Tensor, np.ndarray, Sequence[Union[PIL.Image.Image, str, os.PathLike]]]
Images = Union[list[PIL.Image.Image], torch.Tensor]

# OpenAI CLIP's statistics: what CLIPImageProcessor uses when its config names none
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_ACCEPTED = ("a PIL image, a path or URL, a list of those, a torch tensor (c, h, w) / (b, c, h, w) in [0, 1], "
             "or a numpy array (h, w, c) / (b, h, w, c)")


# ----------------------------------------------------------------------------------------------- input
def load_images(image: Any, what: str = "image") -> Images:
    """User images -> a list of RGB PIL images, or a float32 ``(b, 3, h, w)`` tensor in [0, 1] for array input.

    Raises ``TypeError`` for an unsupported type, ``FileNotFoundError`` for a missing path and ``ValueError``
    for an empty list, a bad shape or values outside [0, 1].
    """
    if isinstance(image, (PIL.Image.Image, str, os.PathLike)):
        return [_load_one(image, what)]
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError(f"{what} is an empty list; pass at least one image")
        return [_load_one(item, f"{what}[{i}]") for i, item in enumerate(image)]
    if isinstance(image, np.ndarray):
        return tensor_images(_array_to_tensor(image, what), what)
    if isinstance(image, torch.Tensor):
        return tensor_images(image, what)
    raise TypeError(f"{what} must be {_ACCEPTED}; got {type(image).__name__}")


def _load_one(item: Any, what: str) -> PIL.Image.Image:
    if isinstance(item, PIL.Image.Image):
        return to_rgb(item)
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)  # missing file -> MediaFileNotFoundError (a FileNotFoundError and a ValueError)
    raise TypeError(f"{what} must be a PIL image or a path / URL inside a list; got {type(item).__name__}. Accepted: {_ACCEPTED}")


def _array_to_tensor(a: np.ndarray, what: str) -> torch.Tensor:
    """A channels-last array (h, w), (h, w, c) or (b, h, w, c) -> a channels-first tensor; 16-bit scaled to [0, 1]."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim not in (3, 4):
        raise ValueError(f"{what}: a numpy image must be (h, w), (h, w, c) or (b, h, w, c); got shape {a.shape}")
    if a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535.0
    elif a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{what}: unsupported array dtype {a.dtype}; pass floats in [0, 1] or uint8 / uint16 pixels")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))


def tensor_images(x: Any, what: str = "image") -> torch.Tensor:
    """A ``(c, h, w)`` or ``(b, c, h, w)`` tensor -> float32 ``(b, 3, h, w)`` in [0, 1].

    uint8 / uint16 values are scaled from 0..255 / 0..65535; 1 channel is replicated to RGB; 4 channels (RGBA) are
    composited over white. Float values must lie in [0, 1] (the reference's convention for image tensors).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a tensor or array of shape (c, h, w) or (b, c, h, w); got shape {getattr(x, 'shape', None)}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4) or 0 in x.shape:
        raise ValueError(f"{what} must have shape (c, h, w) or (b, c, h, w) with c = 1, 3 or 4 (numpy: channels last); "
                         f"got {tuple(x.shape)}. Permute channels-last data first, e.g. x.permute(2, 0, 1)")
    x = _to_unit_float(x, what)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        rgb, alpha = x[:, :3], x[:, 3:]
        background = torch.tensor(WHITE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
        x = rgb * alpha + background * (1 - alpha)
    return x.contiguous()


def _to_unit_float(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.uint16:
        return x.float() / 65535.0
    if not x.is_floating_point():
        raise TypeError(f"{what}: unsupported tensor dtype {x.dtype}; pass floats in [0, 1] or uint8 / uint16 pixels")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinity")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"{what} tensor values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
                         "for [-1, 1] data pass (x + 1) / 2, for 0..255 floats pass x / 255")
    return x


def pil_to_tensor(images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> float32 ``(b, 3, h, w)`` in [0, 1] (``uint8 / 255``)."""
    arrays = np.stack([np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0 for im in images])
    return torch.from_numpy(arrays.transpose(0, 3, 1, 2).copy())


def vae_pixels(images: Images, height: int, width: int) -> torch.Tensor:
    """Images -> ``(b, 3, height, width)`` in [-1, 1]: PIL images resized with Lanczos, tensors with nearest
    neighbour (the reference's VaeImageProcessor rules)."""
    if isinstance(images, torch.Tensor):
        x = F.interpolate(images, size=(height, width))
    else:
        x = pil_to_tensor([im.resize((width, height), resample=PIL.Image.Resampling.LANCZOS) for im in images])
    return 2.0 * x - 1.0


# ----------------------------------------------------------------------------------------------- CLIP preprocessing
def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd ``size`` (computed in ``dtype``, as the reference does)."""
    x = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-x.pow(2.0) / (2 * torch.tensor(sigma, dtype=dtype).pow(2.0)))
    return g / g.sum()


def _filter_along(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Depthwise 1-D convolution along H (dim=-2) or W (dim=-1) with reflect padding; b c h w -> b c h w."""
    c, k = x.shape[1], kernel.numel()
    shape = (c, 1, k, 1) if dim == -2 else (c, 1, 1, k)
    weight = kernel.to(device=x.device, dtype=x.dtype).reshape(1, 1, *shape[2:]).expand(shape)
    pad = (0, 0, (k - 1) // 2, k - 1 - (k - 1) // 2) if dim == -2 else ((k - 1) // 2, k - 1 - (k - 1) // 2, 0, 0)
    return F.conv2d(F.pad(x, pad, mode="reflect"), weight, groups=c)


def gaussian_blur2d(x: torch.Tensor, kernel_size: tuple[int, int], sigma: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of b c h w images (first along W, then along H)."""
    x = _filter_along(x, _gaussian_kernel(kernel_size[1], sigma[1], x.dtype), dim=-1)
    return _filter_along(x, _gaussian_kernel(kernel_size[0], sigma[0], x.dtype), dim=-2)


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic", align_corners: bool = True) -> torch.Tensor:
    """Blur with sigma = (downscale factor - 1) / 2 (scikit-image's rule), kernel about 4 sigma (odd, at least 3),
    then interpolate to ``size``: the resize SVD's original implementation feeds CLIP. b c h w -> b c H W."""
    h, w = x.shape[-2:]
    sigmas = tuple(max((s / t - 1.0) / 2.0, 0.001) for s, t in ((h, size[0]), (w, size[1])))
    ks = tuple(int(max(2.0 * 2 * s, 3)) for s in sigmas)
    ks = tuple(k + 1 if k % 2 == 0 else k for k in ks)
    x = gaussian_blur2d(x, ks, sigmas)
    return F.interpolate(x, size=size, mode=interpolation, align_corners=align_corners)


def _processor_stats(feature_extractor: Any) -> tuple[Sequence[float], Sequence[float]]:
    get = feature_extractor.get if isinstance(feature_extractor, dict) else lambda k, d=None: getattr(feature_extractor, k, d)
    mean, std = get("image_mean") or CLIP_MEAN, get("image_std") or CLIP_STD
    return (mean, std) if isinstance(mean, (list, tuple)) else ((mean,) * 3, (std,) * 3)


def clip_normalize(pixels: torch.Tensor, feature_extractor: Any = None) -> torch.Tensor:
    """``(x - mean) / std`` per channel with the feature extractor's ``image_mean`` / ``image_std``; x in [0, 1]."""
    mean, std = _processor_stats(feature_extractor)
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t


def clip_size(image_encoder: Any, default: int = 224) -> int:
    config = getattr(image_encoder, "config", None)
    size = getattr(config, "image_size", None)
    return int(size) if isinstance(size, int) else default


def clip_pixel_values(images: Images, feature_extractor: Any, size: int = 224) -> torch.Tensor:
    """Images -> CLIP input ``(b, 3, size, size)``: antialiased resize done on [-1, 1] values (as the original
    implementation), then normalisation. A tensor already at ``size`` x ``size`` is only normalised (reference rule);
    one of another size is resized too (the reference would fail in the encoder)."""
    if isinstance(images, torch.Tensor):
        x = images
        if tuple(x.shape[-2:]) == (size, size):
            return clip_normalize(x, feature_extractor)
        batches = [x]
    else:  # PIL images may differ in size: resize each on its own
        batches = [pil_to_tensor([im]) for im in images]
    resized = [(resize_with_antialiasing(b * 2.0 - 1.0, (size, size)) + 1.0) / 2.0 for b in batches]
    return clip_normalize(torch.cat(resized), feature_extractor)


# ----------------------------------------------------------------------------------------------- embeddings
def image_embeddings(image_encoder: Any, pixel_values: torch.Tensor, device: torch.device, num_per_image: int = 1,
                     do_classifier_free_guidance: bool = False) -> torch.Tensor:
    """CLIP image embeddings as a one-token context ``(b * n, 1, d)``, each image's rows adjacent; with guidance,
    zero embeddings (the unconditional half) are stacked in front: ``(2 b n, 1, d)``."""
    dtype = next(image_encoder.parameters()).dtype
    embeds = image_encoder(pixel_values.to(device=device, dtype=dtype)).image_embeds.unsqueeze(1)  # b 1 d
    embeds = embeds.repeat_interleave(num_per_image, dim=0)
    if do_classifier_free_guidance:
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
    return embeds
