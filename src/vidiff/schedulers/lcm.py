"""LCMScheduler: multistep sampling of latent consistency models (Luo et al. 2023, arXiv:2310.04378).

AnimateLCM and LCM-LoRA use it with 4-8 steps taken from the ``original_inference_steps``-point grid
the model was distilled on. Each step maps x_t to a clean estimate (``denoised``) with the consistency
boundary scalings, then re-noises it to the next timestep with fresh ``randn_tensor`` noise.
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
from .base import AlphaBarSchedulerMixin, ScheduleConfig, SigmaSchedulerMixin
from .ddpm import DDPMScheduler
from .updates import lcm_boundary_scalings, vp_x0

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LCMSchedulerOutput:
    """What ``LCMScheduler.step`` returns: the re-noised next sample and the clean estimate."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor | None = None

    def to_tuple(self) -> tuple:
        return tuple(v for v in (self.prev_sample, self.denoised) if v is not None)

    def __getitem__(self, key: int | slice | str):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


@dataclasses.dataclass
class LCMConfig(ScheduleConfig):
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_scaling: float = 10.0

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.original_inference_steps, (int, np.integer)) or not 1 <= self.original_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"{type(self).__name__}: original_inference_steps must be an int in [1, num_train_timesteps={self.num_train_timesteps}], got {self.original_inference_steps!r}")


class LCMScheduler(AlphaBarSchedulerMixin, SigmaSchedulerMixin):
    """Consistency sampling over the distillation grid; ``step`` returns ``prev_sample`` and ``denoised``."""

    config_class = LCMConfig
    _compatibles: ClassVar[tuple[str, ...]] = ()  # as in the reference: only its own configs
    sigma_data = 0.5
    previous_timestep = DDPMScheduler.previous_timestep

    def __init__(self, config: LCMConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        self._build_alphas(cfg)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.custom_timesteps = False
        self._reset_step_index()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        """Evenly pick ``num_inference_steps`` from the distillation grid, or use custom ``timesteps``.

        ``strength`` < 1 (img2img) keeps only the start of the grid (custom: drops the first steps).
        """
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        original_steps = original_inference_steps if original_inference_steps is not None else cfg.original_inference_steps
        if original_steps > cfg.num_train_timesteps:
            raise ValueError(f"original_inference_steps={original_steps} is larger than num_train_timesteps={cfg.num_train_timesteps}")
        origin = schedules.lcm_origin_timesteps(cfg.num_train_timesteps, original_steps, strength)
        if timesteps is not None:
            ts = self._custom_timesteps(timesteps, origin, original_steps, strength)
        else:
            self._check_lcm_steps(num_inference_steps, len(origin), original_steps, strength)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            ts = schedules.lcm_timesteps(origin, num_inference_steps)
        self.timesteps = ts.to(device=device, dtype=torch.long)
        self._reset_step_index()

    def _check_lcm_steps(self, n: int, grid_size: int, original_steps: int, strength: float) -> None:
        limit = self.config.num_train_timesteps
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {n!r}")
        if n > limit:
            raise ValueError(f"num_inference_steps={n} is larger than num_train_timesteps={limit}")
        if grid_size // n < 1:
            raise ValueError(f"num_inference_steps={n} is more than the {grid_size} timesteps of original_inference_steps x strength = {original_steps} x {strength}; use at most {grid_size} steps or a higher strength")
        if n > original_steps:
            raise ValueError(f"num_inference_steps={n} is larger than original_inference_steps={original_steps}; the schedule is a subset of that grid")

    def _custom_timesteps(self, timesteps: list[int], origin: torch.Tensor, original_steps: int, strength: float) -> torch.Tensor:
        limit = self.config.num_train_timesteps
        if any(timesteps[i] >= timesteps[i - 1] for i in range(1, len(timesteps))):
            raise ValueError(f"custom timesteps must be strictly descending, got {list(timesteps)}")
        if timesteps[0] >= limit:
            raise ValueError(f"custom timesteps must start below num_train_timesteps={limit}, got {timesteps[0]}")
        if strength == 1.0 and timesteps[0] != limit - 1:
            logger.warning("custom timesteps start at %s, not num_train_timesteps - 1 = %s; results may be off", timesteps[0], limit - 1)
        grid = set(origin.tolist())
        off_grid = [t for t in timesteps[1:] if t not in grid]
        if off_grid:
            logger.warning("custom timesteps %s are not on the distillation grid; results may be off", off_grid)
        if len(timesteps) > original_steps:
            logger.warning("%d custom timesteps exceed original_inference_steps=%d; results may be off", len(timesteps), original_steps)
        self.num_inference_steps = len(timesteps)
        self.custom_timesteps = True
        t_start = max(self.num_inference_steps - min(int(self.num_inference_steps * strength), self.num_inference_steps), 0)
        return torch.from_numpy(np.array(timesteps, dtype=np.int64)[t_start * self.order :])

    def get_scalings_for_boundary_condition_discrete(self, timestep: int | torch.Tensor) -> tuple:
        return lcm_boundary_scalings(timestep, self.config.timestep_scaling, self.sigma_data)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple:
        """x_t -> (denoised x_0 estimate, x_{t_next} = re-noised estimate); the last step returns the estimate."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call scheduler.set_timesteps(num_inference_steps) before step()")
        if self.step_index is None:
            self._init_step_index(timestep)
        next_index = self.step_index + 1
        prev_timestep = self.timesteps[next_index] if next_index < len(self.timesteps) else timestep
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(timestep)
        x0 = vp_x0(model_output, sample, alpha_prod_t.sqrt(), (1 - alpha_prod_t).sqrt(), self.config.prediction_type)
        denoised = c_out * self._clip_or_threshold(x0) + c_skip * sample
        if self.step_index != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=denoised.dtype)
            prev_sample = alpha_prod_t_prev.sqrt() * denoised + (1 - alpha_prod_t_prev).sqrt() * noise
        else:
            prev_sample = denoised
        self._step_index += 1
        if not return_dict:
            return (prev_sample, denoised)
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)
