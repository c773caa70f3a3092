"""FreeInit (Wu et al. 2023, arXiv 2312.07537): re-initialise the noise between sampling passes.

After a full denoising pass the result is diffused back to the last training timestep; its low frequencies (in
time, height and width) are kept and its high frequencies are replaced by fresh Gaussian noise. The next pass
starts from that mix, which makes the clip more temporally consistent.

``FreeInitMixin`` gives a pipeline ``enable_free_init(...)`` / ``disable_free_init()`` and ``_apply_free_init``, which
its ``__call__`` runs before each sampling pass. The filters and the mixing are plain functions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fft as fft

from ..runtime.random import randn_tensor

FILTER_METHODS = ("butterworth", "gaussian", "ideal")


# ---------------------------------------------------------------------------------------------- filters


def _squared_distance(frames: int, height: int, width: int, spatial: float, temporal: float) -> torch.Tensor:
    """Normalised squared distance of each (t, h, w) frequency bin from the centre, in float64 (f h w)."""
    t = torch.arange(frames, dtype=torch.float64)
    h = torch.arange(height, dtype=torch.float64)
    w = torch.arange(width, dtype=torch.float64)
    dt = ((spatial / temporal) * (2 * t / frames - 1)) ** 2
    dh = (2 * h / height - 1) ** 2
    dw = (2 * w / width - 1) ** 2
    return dt[:, None, None] + dh[None, :, None] + dw[None, None, :]


def low_pass_filter(shape: tuple[int, ...], method: str = "butterworth", order: float = 4,
                    spatial_stop_frequency: float = 0.25, temporal_stop_frequency: float = 0.25,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The FreeInit low-pass mask for latents of ``shape`` (..., frames, height, width), float32.

    ``butterworth``: 1 / (1 + (d / s^2)^order); ``gaussian``: exp(-d / (2 s^2)); ``ideal``: d <= 2 s; where d is the
    squared normalised distance from the centre of the (shifted) spectrum and s the spatial stop frequency. A zero
    stop frequency gives an all-zero mask (the reference's rule).
    """
    check_filter_method(method)
    mask = torch.zeros(shape)
    if spatial_stop_frequency == 0 or temporal_stop_frequency == 0:
        return mask.to(device)
    d = _squared_distance(shape[-3], shape[-2], shape[-1], spatial_stop_frequency, temporal_stop_frequency)
    s = spatial_stop_frequency
    if method == "butterworth":
        values = 1 / (1 + (d / s**2) ** order)
    elif method == "gaussian":
        values = torch.exp(-1 / (2 * s**2) * d)
    else:
        values = (d <= s * 2).to(torch.float64)
    mask[...] = values.to(mask.dtype)
    return mask.to(device)


def mix_frequencies(x: torch.Tensor, noise: torch.Tensor, low_pass: torch.Tensor) -> torch.Tensor:
    """The low frequencies of ``x`` plus the high frequencies of ``noise`` (3-D FFT over frames, height, width)."""
    dims = (-3, -2, -1)
    x_freq = fft.fftshift(fft.fftn(x, dim=dims), dim=dims)
    noise_freq = fft.fftshift(fft.fftn(noise, dim=dims), dim=dims)
    mixed = x_freq * low_pass + noise_freq * (1 - low_pass)
    return fft.ifftn(fft.ifftshift(mixed, dim=dims), dim=dims).real


def check_filter_method(method: Any) -> None:
    if method not in FILTER_METHODS:
        raise ValueError(f"FreeInit method must be one of {list(FILTER_METHODS)}, got {method!r}")


# ---------------------------------------------------------------------------------------------- mixin


class FreeInitMixin:
    """``enable_free_init`` / ``disable_free_init`` for the AnimateDiff pipelines (state lives on the pipeline)."""

    def enable_free_init(
        self,
        num_iters: int = 3,
        use_fast_sampling: bool = False,
        method: str = "butterworth",
        order: int = 4,
        spatial_stop_frequency: float = 0.25,
        temporal_stop_frequency: float = 0.25,
    ) -> None:
        """Sample ``num_iters`` times, re-initialising the noise's high frequencies before each pass after the first.

        ``use_fast_sampling``: coarse-to-fine, pass i uses ``num_inference_steps * (i + 1) / num_iters`` steps.
        ``method``: "butterworth" (with ``order``), "gaussian" or "ideal" low-pass filter; the stop frequencies are
        normalised to [0, 1] (``d_s`` and ``d_t`` in the paper).
        """
        if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
            raise ValueError(f"num_iters must be a positive integer (sampling passes), got {num_iters!r}")
        check_filter_method(method)
        if isinstance(order, bool) or not isinstance(order, (int, float)) or not order > 0:
            raise ValueError(f"order must be a positive number (the Butterworth filter order), got {order!r}")
        for name, value in (("spatial_stop_frequency", spatial_stop_frequency), ("temporal_stop_frequency", temporal_stop_frequency)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1] (a normalised frequency), got {value!r}")
        self._free_init_num_iters = num_iters
        self._free_init_use_fast_sampling = bool(use_fast_sampling)
        self._free_init_method = method
        self._free_init_order = order
        self._free_init_spatial_stop_frequency = spatial_stop_frequency
        self._free_init_temporal_stop_frequency = temporal_stop_frequency

    def disable_free_init(self) -> None:
        """Back to a single sampling pass."""
        self._free_init_num_iters = None

    @property
    def free_init_enabled(self) -> bool:
        return getattr(self, "_free_init_num_iters", None) is not None

    def _free_init_steps(self, num_inference_steps: int, iteration: int) -> int:
        if not self._free_init_use_fast_sampling:
            return num_inference_steps
        return max(1, int(num_inference_steps / self._free_init_num_iters * (iteration + 1)))

    def _reinit_noise(self, latents: torch.Tensor, initial_noise: torch.Tensor, device, generator) -> torch.Tensor:
        """Diffuse ``latents`` to the last training timestep with the first pass's noise, keep its low frequencies and
        take the high ones from fresh noise (drawn from ``generator``, float32, as the reference does)."""
        mask = low_pass_filter((1, *latents.shape[1:]), self._free_init_method, self._free_init_order,
                               self._free_init_spatial_stop_frequency, self._free_init_temporal_stop_frequency, device)
        last = torch.full((latents.shape[0],), self.scheduler.config.num_train_timesteps - 1).long().to(device)
        z_t = self.scheduler.add_noise(latents, initial_noise, last).to(dtype=torch.float32)
        z_rand = randn_tensor(latents.shape, generator=generator, device=device, dtype=torch.float32)
        return mix_frequencies(z_t, z_rand, mask).to(latents.dtype)

    def free_init_iterations(self) -> int:
        """Sampling passes: ``num_iters`` with FreeInit, else 1."""
        return self._free_init_num_iters if self.free_init_enabled else 1

    def _apply_free_init(self, latents: torch.Tensor, iteration: int, num_inference_steps: int, device,
                         generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Start latents and timesteps of pass ``iteration`` (the reference's ``_apply_free_init``).

        Pass 0 keeps ``latents`` (and remembers them as the noise to diffuse with); later passes re-initialise them
        from the previous pass's result. Each pass resets the scheduler to its (coarse-to-fine) step count.
        """
        if iteration == 0:
            self._free_init_initial_noise = latents.detach().clone()
        else:
            latents = self._reinit_noise(latents, self._free_init_initial_noise, device, generator)
        steps = self._free_init_steps(num_inference_steps, iteration)
        if steps > 0:  # (video-to-video can shrink the count to 0; the reference then keeps the last schedule)
            self.scheduler.set_timesteps(steps, device=device)
        return latents, self.scheduler.timesteps
