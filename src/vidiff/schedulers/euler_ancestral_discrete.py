"""EulerAncestralDiscreteScheduler: Euler steps with fresh noise at each step (k-diffusion's ``euler_ancestral``).

The InstructPix2Pix checkpoint (timbrooks/instruct-pix2pix) ships it. Like the reference, every step,
the last one included, draws ``randn_tensor(model_output.shape, generator=...)`` on the model output's
device and dtype, so a seeded generator reproduces the reference's samples.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import numpy as np
import torch

from ..runtime.random import randn_tensor
from . import schedules
from .base import ScheduleConfig, SchedulerOutput, SigmaSchedulerMixin
from .updates import ancestral_sigmas, euler_step, euler_x0

logger = logging.getLogger(__name__)


def check_num_inference_steps(num_inference_steps) -> None:
    if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")


class DiscreteSigmaSchedulerMixin(SigmaSchedulerMixin):
    """Samplers over the training sigmas sqrt((1 - alpha_bar) / alpha_bar) with unit-variance model input.

    The model sees x / sqrt(sigma^2 + 1); the initial noise is scaled by ``init_noise_sigma``; ``add_noise``
    is x_0 + sigma * noise.
    """

    def _build_train_sigmas(self, cfg: ScheduleConfig) -> None:
        betas = schedules.make_betas(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.trained_betas)
        self.betas = schedules.rescale_zero_terminal_snr(betas) if cfg.rescale_betas_zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if cfg.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # a tiny positive value keeps the last sigma finite
        sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod).flip(0)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)]).to("cpu")
        self.timesteps = torch.from_numpy(np.linspace(0, cfg.num_train_timesteps - 1, cfg.num_train_timesteps, dtype=float)[::-1].copy())
        self.num_inference_steps: int | None = None
        self.is_scale_input_called = False
        self._reset_step_index()

    def _train_sigmas(self) -> torch.Tensor:
        """The training sigmas in timestep order (float32, CPU)."""
        return schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod.cpu())

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Scale of the initial noise: sigma_max, or sqrt(sigma_max^2 + 1) for the 'leading' spacing."""
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return self.sigmas.max()
        return (self.sigmas.max() ** 2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) so the model sees unit-variance input."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        self.is_scale_input_called = True
        return sample / ((sigma**2 + 1) ** 0.5)

    def _start_step(self, timestep: float | torch.Tensor) -> None:
        if not self.is_scale_input_called:
            logger.warning("call scheduler.scale_model_input() on the model input before step(), as the denoising loop must")
        if self.step_index is None:
            self._init_step_index(timestep)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_0 + sigma * noise at ``timesteps`` (which must be in ``self.timesteps``)."""
        return original_samples + noise * self._schedule_sigmas(original_samples, timesteps)


@dataclasses.dataclass
class EulerAncestralDiscreteConfig(ScheduleConfig):
    timestep_spacing: str = "linspace"

    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction")


class EulerAncestralDiscreteScheduler(DiscreteSigmaSchedulerMixin):
    """Ancestral Euler sampler: a deterministic step to sigma_down plus noise of size sigma_up."""

    config_class = EulerAncestralDiscreteConfig

    def __init__(self, config: EulerAncestralDiscreteConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        self._build_train_sigmas(cfg)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Spaced timesteps and their interpolated training sigmas, plus a final sigma of 0."""
        check_num_inference_steps(num_inference_steps)
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset, integer=False)
        sigmas = schedules.interp_sigmas(ts, self._train_sigmas())
        self.sigmas = schedules.append_final_sigma(sigmas, "zero", self.alphas_cumprod)
        self.timesteps = ts.to(device=device)
        self._reset_step_index()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x at sigma_i -> x at sigma_{i+1}: Euler to sigma_down, then add sigma_up * fresh noise."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("EulerAncestralDiscreteScheduler.step() takes one of scheduler.timesteps as timestep, not an integer index (e.g. from enumerate)")
        self._start_step(timestep)
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        pred_original_sample = euler_x0(model_output, sample, sigma, sigma, self.config.prediction_type)
        sigma_up, sigma_down = ancestral_sigmas(sigma, self.sigmas[self.step_index + 1])
        prev_sample = euler_step(sample, pred_original_sample, sigma, sigma_down)
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
