"""DDPMScheduler: ancestral sampling of denoising diffusion probabilistic models (Ho et al. 2020)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ..runtime.random import randn_tensor
from . import schedules
from .base import AlphaBarSchedulerMixin, ScheduleConfig, SchedulerOutput, check_choice
from .updates import ddpm_noise, ddpm_posterior_mean, ddpm_variance, vp_x0

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


@dataclasses.dataclass
class DDPMConfig(ScheduleConfig):
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0

    beta_schedules: ClassVar[tuple[str, ...]] = schedules.BETA_SCHEDULES + ("laplace", "sigmoid")

    def validate(self) -> None:
        super().validate()
        check_choice(type(self).__name__, "variance_type", self.variance_type, VARIANCE_TYPES)


class DDPMScheduler(AlphaBarSchedulerMixin):
    """DDPM sampling; also the usual noise scheduler for training (``add_noise``, ``get_velocity``)."""

    config_class = DDPMConfig

    def __init__(self, config: DDPMConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        self._build_alphas(cfg, DDPMConfig.beta_schedules)
        self.one = torch.tensor(1.0)
        self.custom_timesteps = False
        self.variance_type = cfg.variance_type

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None, timesteps: list[int] | None = None) -> None:
        """Evenly spaced timesteps, or a custom strictly descending list via ``timesteps``."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            if any(timesteps[i] >= timesteps[i - 1] for i in range(1, len(timesteps))):
                raise ValueError(f"custom timesteps must be strictly descending, got {list(timesteps)}")
            if timesteps[0] >= cfg.num_train_timesteps:
                raise ValueError(f"custom timesteps must start below num_train_timesteps={cfg.num_train_timesteps}, got {timesteps[0]}")
            ts = torch.from_numpy(np.array(timesteps, dtype=np.int64))
            self.custom_timesteps = True
        else:
            self._check_steps(num_inference_steps)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            ts = schedules.spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        self.timesteps = ts.to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep after ``timestep`` in the schedule (-1 after the last); t - 1 before set_timesteps."""
        if not (self.custom_timesteps or self.num_inference_steps):
            return timestep - 1
        index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
        return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]

    def _alpha_prods(self, t):
        prev_t = self.previous_timestep(t)
        return self.alphas_cumprod[t], (self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one)

    def _get_variance(self, t, predicted_variance=None, variance_type: str | None = None):
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t)
        return ddpm_variance(alpha_prod_t, alpha_prod_t_prev, variance_type or self.config.variance_type, predicted_variance)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x_t -> x_{t-1}: the posterior mean given the predicted x_0, plus fresh noise while t > 0."""
        t = timestep
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t)
        alpha, sigma = alpha_prod_t ** (0.5), (1 - alpha_prod_t) ** (0.5)
        pred_original_sample = vp_x0(model_output, sample, alpha, sigma, self.config.prediction_type)
        pred_original_sample = self._clip_or_threshold(pred_original_sample)
        prev_sample = ddpm_posterior_mean(pred_original_sample, sample, alpha_prod_t, alpha_prod_t_prev)
        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
            variance = ddpm_variance(alpha_prod_t, alpha_prod_t_prev, self.variance_type, predicted_variance)
            prev_sample = prev_sample + ddpm_noise(variance, self.variance_type, noise)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
