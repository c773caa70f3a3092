"""DDIMScheduler: denoising diffusion implicit models (Song et al. 2020), deterministic at eta=0."""

from __future__ import annotations

import dataclasses

import torch

from ..runtime.random import randn_tensor
from . import schedules
from .base import AlphaBarSchedulerMixin, ScheduleConfig, SchedulerOutput
from .updates import ddim_step, ddim_variance, vp_eps, vp_x0


@dataclasses.dataclass
class DDIMConfig(ScheduleConfig):
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0


class DDIMScheduler(AlphaBarSchedulerMixin):
    """DDIM sampling; ``DDIMScheduler(**scheduler_config)`` or ``DDIMScheduler.from_pretrained(id, subfolder="scheduler")``."""

    config_class = DDIMConfig

    def __init__(self, config: DDIMConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        self._build_alphas(cfg)
        # alpha_bar "before" the first step: 1 (a clean sample) or the first training value
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        self._check_steps(num_inference_steps)
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = schedules.spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        self.timesteps = ts.to(device)

    def _get_variance(self, timestep, prev_timestep):
        return ddim_variance(self.alphas_cumprod[timestep], self._alpha_prod_prev(prev_timestep))

    def _alpha_prod_prev(self, prev_timestep):
        return self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x_t -> x_{t-1}. ``eta`` scales the fresh noise (0: DDIM, 1: DDPM-like)."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call scheduler.set_timesteps(num_inference_steps) before step()")
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step(), not both")
        # the previous timestep is one stride back, whatever the spacing (as in the reference)
        prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prod_prev(prev_timestep)
        alpha, sigma = alpha_prod_t ** (0.5), (1 - alpha_prod_t) ** (0.5)
        pred_type = self.config.prediction_type
        pred_original_sample = vp_x0(model_output, sample, alpha, sigma, pred_type)
        pred_epsilon = vp_eps(model_output, sample, alpha, sigma, pred_type)
        pred_original_sample = self._clip_or_threshold(pred_original_sample)
        std_dev_t = eta * ddim_variance(alpha_prod_t, alpha_prod_t_prev) ** (0.5)
        if use_clipped_model_output:
            pred_epsilon = vp_eps(pred_original_sample, sample, alpha, sigma, "sample")
        noise = None
        if eta > 0:
            noise = variance_noise
            if noise is None:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        prev_sample = ddim_step(pred_original_sample, pred_epsilon, alpha_prod_t_prev, std_dev_t, noise)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
