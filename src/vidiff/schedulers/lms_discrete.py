"""LMSDiscreteScheduler: linear multistep in sigma (k-diffusion's ``sample_lms``, Karras et al. 2022).

Each step integrates the Lagrange polynomial through the last ``order`` derivatives dx/dsigma over
[sigma_i, sigma_{i+1}]. The reference integrates numerically with scipy; the integrand is a polynomial,
so here Gauss-Legendre quadrature gives the integral exactly and scipy is not needed.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ..configuration import ConfigError
from . import schedules
from .base import ScheduleConfig, SchedulerOutput
from .euler_ancestral_discrete import DiscreteSigmaSchedulerMixin, check_num_inference_steps
from .updates import euler_x0, lms_coefficient


@dataclasses.dataclass
class LMSDiscreteConfig(ScheduleConfig):
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    timestep_spacing: str = "linspace"

    # the reference's LMS has no zero-terminal-SNR option: not a config key, always off
    rescale_betas_zero_snr: ClassVar[bool] = False

    def validate(self) -> None:
        super().validate()
        if sum([bool(self.use_beta_sigmas), bool(self.use_exponential_sigmas), bool(self.use_karras_sigmas)]) > 1:
            raise ConfigError(f"{type(self).__name__}: use only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")


class LMSDiscreteScheduler(DiscreteSigmaSchedulerMixin):
    """Linear multistep sampler (order 4 by default, lower while fewer past derivatives exist)."""

    config_class = LMSDiscreteConfig

    def __init__(self, config: LMSDiscreteConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        if cfg.use_beta_sigmas:
            schedules.require_scipy()  # fail now rather than at set_timesteps
        self._build_train_sigmas(cfg)
        self.use_karras_sigmas = cfg.use_karras_sigmas
        self.set_timesteps(cfg.num_train_timesteps)  # as in the reference: a full schedule from the start

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Spaced timesteps and their sigmas (interpolated, or a Karras / exponential / beta ladder), final sigma 0."""
        check_num_inference_steps(num_inference_steps)
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset, integer=False)
        train_sigmas = self._train_sigmas()
        sigmas = schedules.interp_sigmas(ts, train_sigmas)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            lo, hi = sigmas[-1].item(), sigmas[0].item()
            if cfg.use_karras_sigmas:
                sigmas = schedules.karras_sigmas(lo, hi, num_inference_steps)
            elif cfg.use_exponential_sigmas:
                sigmas = schedules.exponential_sigmas(lo, hi, num_inference_steps)
            else:
                sigmas = schedules.beta_sigmas(lo, hi, num_inference_steps)
            ts = schedules.sigma_to_t(sigmas, torch.from_numpy(np.log(train_sigmas.numpy())))
        self.sigmas = schedules.append_final_sigma(sigmas, "zero", self.alphas_cumprod)
        self.timesteps = ts.to(device=device, dtype=torch.float32)
        self._reset_step_index()
        self.derivatives: list[torch.Tensor] = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """Weight of the derivative ``current_order`` steps back in the order-``order`` step from sigma_t."""
        nodes = [self.sigmas[t - k].item() for k in range(order)]
        return lms_coefficient(nodes, current_order, self.sigmas[t].item(), self.sigmas[t + 1].item())

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = 4,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x at sigma_i -> x at sigma_{i+1} from the last ``order`` derivatives."""
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be a positive int, got {order!r}")
        self._start_step(timestep)
        i = self.step_index
        sigma = self.sigmas[i]
        pred_original_sample = euler_x0(model_output, sample, sigma, sigma, self.config.prediction_type)
        self.derivatives.append((sample - pred_original_sample) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(i + 1, order)
        coeffs = [self.get_lms_coefficient(order, i, k) for k in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
