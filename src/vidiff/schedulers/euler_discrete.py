"""EulerDiscreteScheduler: Euler steps of the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 2).

Stable Video Diffusion ships it with ``use_karras_sigmas=True``, ``prediction_type="v_prediction"``,
``timestep_type="continuous"`` (the model sees 0.25 * log(sigma)), ``sigma_min=0.002``, ``sigma_max=700``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import numpy as np
import torch

from ..configuration import ConfigError
from ..runtime.random import randn_tensor
from . import schedules
from .base import ScheduleConfig, SchedulerOutput, SigmaSchedulerMixin, check_choice
from .updates import euler_step, euler_x0

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EulerDiscreteConfig(ScheduleConfig):
    interpolation_type: str = "linear"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    final_sigmas_type: str = "zero"

    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample", "original_sample")

    def validate(self) -> None:
        super().validate()
        owner = type(self).__name__
        check_choice(owner, "interpolation_type", self.interpolation_type, ("linear", "log_linear"))
        check_choice(owner, "timestep_type", self.timestep_type, ("discrete", "continuous"))
        check_choice(owner, "final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        if sum([bool(self.use_beta_sigmas), bool(self.use_exponential_sigmas), bool(self.use_karras_sigmas)]) > 1:
            raise ConfigError(f"{owner}: use only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")

    @property
    def continuous_v(self) -> bool:
        """The model takes 0.25 * log(sigma) as its timestep (EDM-style v-prediction, e.g. SVD)."""
        return self.timestep_type == "continuous" and self.prediction_type == "v_prediction"


class EulerDiscreteScheduler(SigmaSchedulerMixin):
    """Euler sampler over a sigma ladder (linear interpolation of the training sigmas, or Karras / exponential / beta)."""

    config_class = EulerDiscreteConfig

    def __init__(self, config: EulerDiscreteConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        if cfg.use_beta_sigmas:
            schedules.require_scipy()
        betas = schedules.make_betas(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.trained_betas)
        self.betas = schedules.rescale_zero_terminal_snr(betas) if cfg.rescale_betas_zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if cfg.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # a tiny positive value keeps the last sigma finite
        sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod).flip(0)
        self.num_inference_steps: int | None = None
        if cfg.continuous_v:
            self.timesteps = 0.25 * sigmas.log()
        else:
            ts = np.linspace(0, cfg.num_train_timesteps - 1, cfg.num_train_timesteps, dtype=float)[::-1].copy()
            self.timesteps = torch.from_numpy(ts).to(dtype=torch.float32)
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)]).to("cpu")
        self.is_scale_input_called = False
        self.use_karras_sigmas = cfg.use_karras_sigmas
        self.use_exponential_sigmas = cfg.use_exponential_sigmas
        self.use_beta_sigmas = cfg.use_beta_sigmas
        self._reset_step_index()

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Scale of the initial noise: sigma_max, or sqrt(sigma_max^2 + 1) for the 'leading' spacing."""
        max_sigma = max(self.sigmas) if isinstance(self.sigmas, list) else self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) so the model sees unit-variance input."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        self.is_scale_input_called = True
        return sample / ((sigma**2 + 1) ** 0.5)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
    ) -> None:
        """Sigmas and timesteps for ``num_inference_steps``, or custom ``timesteps`` or ``sigmas`` (final sigma included)."""
        self._check_set_timesteps_args(num_inference_steps, timesteps, sigmas)
        cfg = self.config
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        self.num_inference_steps = num_inference_steps
        train_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod.cpu())
        log_sigmas = torch.from_numpy(np.log(train_sigmas.numpy()))
        if sigmas is not None:
            sigmas = torch.from_numpy(np.array(sigmas).astype(np.float32))
            ts = schedules.sigma_to_t(sigmas[:-1], log_sigmas)
        else:
            if timesteps is not None:
                ts = torch.from_numpy(np.array(timesteps).astype(np.float32))
            else:
                ts = schedules.spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset, integer=False)
            ts, sigmas = self._sigma_ladder(ts, train_sigmas, log_sigmas, num_inference_steps)
            sigmas = schedules.append_final_sigma(sigmas, cfg.final_sigmas_type, self.alphas_cumprod)
        sigmas = sigmas.to(dtype=torch.float32, device=device)
        if cfg.continuous_v:
            self.timesteps = (0.25 * sigmas[:-1].log()).to(device=device)
        else:
            self.timesteps = ts.to(torch.float32).to(device=device)
        self._reset_step_index()
        self.sigmas = sigmas.to("cpu")

    def _check_set_timesteps_args(self, num_inference_steps, timesteps, sigmas) -> None:
        cfg = self.config
        given = [name for name, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps), ("sigmas", sigmas)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"pass exactly one of num_inference_steps, timesteps or sigmas to set_timesteps (got {given or 'none'})")
        if timesteps is not None:
            special = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if cfg[k]]
            if special:
                raise ValueError(f"custom timesteps cannot be combined with {special[0]}=True; pass sigmas= instead")
            if cfg.continuous_v:
                raise ValueError("custom timesteps cannot be used with timestep_type='continuous' and v_prediction; pass sigmas= instead")

    def _sigma_ladder(self, ts: torch.Tensor, train_sigmas: torch.Tensor, log_sigmas: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if cfg.interpolation_type == "linear":
            sigmas = schedules.interp_sigmas(ts, train_sigmas)
        else:
            sigmas = schedules.log_linear_sigmas(train_sigmas, n)
        if not (cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas):
            return ts, sigmas
        lo = cfg.sigma_min if cfg.sigma_min is not None else sigmas[-1].item()
        hi = cfg.sigma_max if cfg.sigma_max is not None else sigmas[0].item()
        if cfg.use_karras_sigmas:
            sigmas = schedules.karras_sigmas(lo, hi, n)
        elif cfg.use_exponential_sigmas:
            sigmas = schedules.exponential_sigmas(lo, hi, n)
        else:
            sigmas = schedules.beta_sigmas(lo, hi, n)
        return schedules.sigma_to_t(sigmas, log_sigmas), sigmas

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x at sigma_i -> x at sigma_{i+1}; ``s_churn`` > 0 first adds noise (stochastic sampling)."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("EulerDiscreteScheduler.step() takes one of scheduler.timesteps as timestep, not an integer index (e.g. from enumerate)")
        if not self.is_scale_input_called:
            logger.warning("call scheduler.scale_model_input() on the model input before step(), as the denoising loop must")
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        pred_original_sample = euler_x0(model_output, sample, sigma, sigma_hat, self.config.prediction_type)
        prev_sample = euler_step(sample, pred_original_sample, sigma_hat, self.sigmas[self.step_index + 1])
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_0 + sigma * noise at ``timesteps`` (which must be in ``self.timesteps``)."""
        return original_samples + noise * self._schedule_sigmas(original_samples, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v target, with alpha_bar looked up at each timestep's position in the schedule (as the reference does)."""
        if isinstance(timesteps, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("get_velocity() takes values from scheduler.timesteps, not integer indices")
        schedule = self.timesteps.to(sample.device)
        indices = [self.index_for_timestep(t, schedule) for t in timesteps.to(sample.device)]
        alphas_cumprod = self.alphas_cumprod.to(sample)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        alpha = (alphas_cumprod[indices] ** 0.5).flatten().reshape(shape)
        sigma = ((1 - alphas_cumprod[indices]) ** 0.5).flatten().reshape(shape)
        return alpha * noise - sigma * sample
