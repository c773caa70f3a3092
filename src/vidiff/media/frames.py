"""Frames in every form a user or a pipeline hands over, converted in one place.

Accepted frame inputs (``Frames``):
- a list of PIL images (any mode; converted with :func:`vidiff.media.image.to_rgb`);
- a list of ``H x W x C`` (or ``H x W``) numpy arrays or tensors, float in [0, 1] or uint8;
- a numpy array ``(F, H, W, C)``, float in [0, 1] or uint8;
- a torch tensor ``(F, C, H, W)`` or ``(F, H, W, C)``, float in [0, 1] or uint8;
- the batched forms pipelines return in ``.frames`` (``(1, F, ...)`` arrays, ``[[PIL, ...]]``) when they hold
  one video; for a batch of several pass one of them, e.g. ``output.frames[0]``.

C is 1 (grey), 3 (RGB) or 4 (RGBA). A channel axis of size 1, 3 or 4 is looked for last in numpy arrays and
second in tensors (their usual layouts), then in the other place.

Float -> uint8 happens only in :func:`quantize`: clip to [0, 1], then ``round(x * 255)`` (round half to even,
as numpy and diffusers' ``numpy_to_pil``). NaN or infinite values raise; so do floats far outside [0, 1]
(0..255 pixel values or [-1, 1] data passed as [0, 1]), which would otherwise give a white or grey video.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import PIL.Image
import torch

from .image import WHITE, to_rgb

Frames = Union[Sequence[PIL.Image.Image], Sequence[np.ndarray], np.ndarray, torch.Tensor]
_CHANNELS = (1, 3, 4)
_SLACK = 0.5  # floats may overshoot [0, 1] by this much and are clipped; further out is a convention mistake


def as_frame_array(frames: Frames, what: str = "frames") -> np.ndarray:
    """Any accepted frames input as one ``(F, H, W, C)`` numpy array; the dtype and values are left as given."""
    if isinstance(frames, PIL.Image.Image):
        frames = [frames]
    if isinstance(frames, (list, tuple)):
        return _stack(_unwrap_list(frames, what), what)
    if isinstance(frames, torch.Tensor):
        array, channels_first = _tensor_to_numpy(frames), True
    elif isinstance(frames, np.ndarray):
        array, channels_first = frames, False
    else:
        raise TypeError(f"{what}: expected PIL images, numpy arrays or a torch tensor, got {type(frames).__name__}.")
    if array.ndim == 5:
        array = _unwrap_batch(array, what)
    if array.ndim != 4:
        raise ValueError(
            f"{what}: expected a 4-D video (F, H, W, C) or (F, C, H, W), got shape {tuple(array.shape)}. "
            "For a single frame add a frame axis (x[None]); for greyscale frames add a channel axis (x[..., None])."
        )
    return _channels_last(array, channels_first, what, first_axis=1)


def _unwrap_list(frames: Sequence, what: str) -> Sequence:
    if len(frames) == 0:
        raise ValueError(f"{what}: got an empty list; a video needs at least one frame.")
    if isinstance(frames[0], (list, tuple)) or _is_array(frames[0]) and frames[0].ndim == 4:
        if len(frames) != 1:
            raise ValueError(
                f"{what}: got a batch of {len(frames)} videos; pass one of them, e.g. output.frames[0]."
            )
        return _unwrap_list(frames[0], what) if isinstance(frames[0], (list, tuple)) else frames[0]
    return frames


def _unwrap_batch(array: np.ndarray, what: str) -> np.ndarray:
    if array.shape[0] != 1:
        raise ValueError(
            f"{what}: got a batch of {array.shape[0]} videos (shape {tuple(array.shape)}); pass one of them, "
            "e.g. output.frames[0]."
        )
    return array[0]


def _stack(items: Sequence, what: str) -> np.ndarray:
    if not isinstance(items, (list, tuple)):  # a 4-D array or tensor inside a batch list
        return as_frame_array(items, what)
    arrays = [_frame_to_array(item, f"{what}[{i}]") for i, item in enumerate(items)]
    kinds = {a.dtype.kind for a in arrays}
    if len(kinds) > 1:
        dtypes = sorted({str(a.dtype) for a in arrays})
        raise ValueError(f"{what}: frames mix dtypes {dtypes}; give all frames one type (all uint8 or all float).")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise ValueError(
            f"{what}: all frames must have one size; frame 0 is {first}, frame {odd} is {arrays[odd].shape}."
        )
    return np.stack(arrays)


def _frame_to_array(item: object, what: str) -> np.ndarray:
    if isinstance(item, PIL.Image.Image):
        return np.asarray(to_rgb(item))
    if not _is_array(item):
        raise TypeError(f"{what}: expected a PIL image, numpy array or tensor, got {type(item).__name__}.")
    channels_first = isinstance(item, torch.Tensor)
    array = _tensor_to_numpy(item) if channels_first else item
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise ValueError(f"{what}: expected one frame (H, W, C) or (H, W), got shape {tuple(array.shape)}.")
    return _channels_last(array[None], channels_first, what, first_axis=1)[0]


def _is_array(item: object) -> bool:
    return isinstance(item, (np.ndarray, torch.Tensor))


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()  # float16 / bfloat16 have no exact numpy twin
    return tensor.numpy()


def _channels_last(array: np.ndarray, channels_first: bool, what: str, first_axis: int) -> np.ndarray:
    """(F, H, W, C) from (F, H, W, C) or (F, C, H, W), preferring the layout usual for the input type."""
    first_ok, last_ok = array.shape[first_axis] in _CHANNELS, array.shape[-1] in _CHANNELS
    if first_ok and (channels_first or not last_ok):
        return np.moveaxis(array, first_axis, -1)
    if last_ok:
        return array
    raise ValueError(
        f"{what}: found no channel axis of size 1, 3 or 4 in shape {tuple(array.shape)}; "
        "expected (F, H, W, C) or (F, C, H, W)."
    )


def check_finite(array: np.ndarray, what: str = "frames") -> None:
    """Raise if a float array holds NaN or infinite values (they would encode as a black or garbage video)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"{what}: {bad} of {array.size} values are NaN or infinite, so there is no picture to save. This usually "
            "means the model overflowed in half precision: run the VAE in float32 (e.g. pipe.vae.to(torch.float32))."
        )


def quantize(array: np.ndarray, what: str = "frames") -> np.ndarray:
    """Float pixels in [0, 1] -> uint8: clip to [0, 1], then ``round(x * 255)``. The one place this happens.

    1.02 -> 255 and -0.02 -> 0 (no wrap-around), 0.5 -> 128. The float dtype is kept for the arithmetic, so a
    float32 array gives the same bytes as diffusers' ``numpy_to_pil``.
    """
    return (_clipped_unit_floats(array, what) * 255).round().astype(np.uint8)


def _clipped_unit_floats(array: np.ndarray, what: str) -> np.ndarray:
    """Float pixels checked (finite, not far outside [0, 1]) and clipped to [0, 1]; float16 becomes float32."""
    check_finite(array, what)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.size and (array.min() < -_SLACK or array.max() > 1 + _SLACK):
        raise ValueError(
            f"{what}: float pixels are expected in [0, 1], got values from {array.min():g} to {array.max():g}. "
            "For 0..255 values pass uint8 (x.astype(np.uint8)) or divide by 255; for [-1, 1] values use (x + 1) / 2."
        )
    return np.clip(array, 0, 1)


def _unit_float(array: np.ndarray, what: str) -> np.ndarray:
    """Pixels as float in [0, 1] (uint8 / integers divided by 255; floats checked and clipped)."""
    if array.dtype.kind == "f":
        return _clipped_unit_floats(array, what)
    return _integers_to_uint8(array, what).astype(np.float32) / 255.0


def _integers_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":
        raise TypeError(f"{what}: pixel dtype {array.dtype} is not supported; use float in [0, 1] or uint8.")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"{what}: integer pixels must be in 0..255, got {array.min()}..{array.max()}; "
            "scale them to 8 bits (for 16-bit data: (x / 257).round().astype(np.uint8))."
        )
    return array.astype(np.uint8)


def frames_to_uint8(frames: Frames, what: str = "frames") -> np.ndarray:
    """Any accepted frames input -> ``(F, H, W, 3)`` uint8 RGB.

    Grey frames are replicated to RGB; RGBA frames are composited on white (as :func:`to_rgb` does for images).
    """
    array = as_frame_array(frames, what)
    if array.shape[-1] in (1, 3):
        pixels = quantize(array, what) if array.dtype.kind == "f" else _integers_to_uint8(array, what)
        return np.repeat(pixels, 3, axis=-1) if array.shape[-1] == 1 else pixels
    rgb, alpha = _unit_float(array[..., :3], what), _unit_float(array[..., 3:], what)
    white = np.asarray(WHITE, dtype=rgb.dtype) / 255
    return quantize(rgb * alpha + white * (1 - alpha), what)


def to_pil_frames(frames: Frames, what: str = "frames") -> list[PIL.Image.Image]:
    """Any accepted frames input -> list of RGB PIL images (validated and converted like :func:`frames_to_uint8`)."""
    return [PIL.Image.fromarray(frame) for frame in frames_to_uint8(frames, what)]


def frames_to_tensor(
    frames: Frames,
    value_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype = torch.float32,
    what: str = "frames",
) -> torch.Tensor:
    """Frames -> float tensor ``(F, C, H, W)`` on the CPU, in ``value_range``: ``(-1, 1)`` (VAE input) or ``(0, 1)``.

    uint8 / PIL pixels are divided by 255 in float32 (as diffusers' ``pil_to_numpy``); float frames are taken
    as [0, 1] and not clipped or quantized; ``(-1, 1)`` is then ``2 * x - 1`` (as diffusers' ``normalize``).
    Channels are kept as given (PIL images become RGB).
    """
    if tuple(value_range) not in ((-1.0, 1.0), (0.0, 1.0)):
        raise ValueError(f"{what}: value_range must be (-1, 1) or (0, 1), got {value_range}.")
    array = as_frame_array(frames, what)
    if array.dtype.kind == "f":
        check_finite(array, what)
    else:
        array = _integers_to_uint8(array, what).astype(np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    if tuple(value_range) == (-1.0, 1.0):
        tensor = 2.0 * tensor - 1.0
    return tensor.to(dtype).contiguous()


def tensor_to_frames(tensor: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Decoded ``(F, C, H, W)`` tensor in ``value_range`` -> float32 ``(F, H, W, C)`` numpy frames in [0, 1].

    ``(-1, 1)`` is mapped with ``(x * 0.5 + 0.5).clamp(0, 1)`` (diffusers' ``denormalize``), ``(0, 1)`` clamped.
    Feed the result to :func:`to_pil_frames` or an exporter.
    """
    if tensor.ndim != 4:
        raise ValueError(f"tensor_to_frames: expected (F, C, H, W), got shape {tuple(tensor.shape)}.")
    if tuple(value_range) == (-1.0, 1.0):
        tensor = tensor * 0.5 + 0.5
    elif tuple(value_range) != (0.0, 1.0):
        raise ValueError(f"tensor_to_frames: value_range must be (-1, 1) or (0, 1), got {value_range}.")
    return tensor.clamp(0, 1).detach().cpu().permute(0, 2, 3, 1).float().numpy()
