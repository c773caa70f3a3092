"""PNDMScheduler: pseudo numerical methods for diffusion models (Liu et al. 2022, arXiv:2202.09778).

Stable Diffusion 1.x checkpoints ship it with ``skip_prk_steps=True``: plain linear multistep (PLMS)
after a two-evaluation warm-up on the first step. With ``skip_prk_steps=False`` the first three steps
are fourth-order Runge-Kutta (four model calls each) before PLMS takes over.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from . import schedules
from .base import AlphaBarSchedulerMixin, ScheduleConfig, SchedulerOutput
from .updates import PRK_WEIGHTS, plms_eps, pndm_transfer, vp_eps


@dataclasses.dataclass
class PNDMConfig(ScheduleConfig):
    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False

    # the reference's PNDM has no zero-terminal-SNR option: not a config key, always off
    rescale_betas_zero_snr: ClassVar[bool] = False
    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction")


class PNDMScheduler(AlphaBarSchedulerMixin):
    """PLMS / PNDM sampling; ``PNDMScheduler.from_pretrained("runwayml/stable-diffusion-v1-5", subfolder="scheduler")``."""

    config_class = PNDMConfig
    pndm_order = 4

    def __init__(self, config: PNDMConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        self._build_alphas(cfg)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.prk_timesteps: torch.Tensor | None = None
        self.plms_timesteps: torch.Tensor | None = None
        self.timesteps = None  # as in the reference: no schedule before set_timesteps
        self._reset_history()

    def _reset_history(self) -> None:
        self.ets: list[torch.Tensor] = []  # past noise estimates, oldest first
        self.counter = 0  # model evaluations consumed so far
        self.cur_model_output = 0  # running RK4 sum within a PRK step
        self.cur_sample: torch.Tensor | None = None  # the sample a multi-evaluation step started from

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """PRK timesteps (unless skipped) followed by PLMS timesteps, descending."""
        self._check_steps(num_inference_steps)
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        self.prk_timesteps, self.plms_timesteps = schedules.pndm_timesteps(
            cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset, cfg.skip_prk_steps
        )
        self.timesteps = torch.cat([self.prk_timesteps, self.plms_timesteps]).to(device)
        self._reset_history()

    @property
    def _stride(self) -> int:
        return self.config.num_train_timesteps // self.num_inference_steps

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call scheduler.set_timesteps(num_inference_steps) before step()")

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One model evaluation's worth of progress: a Runge-Kutta stage while warming up, else a PLMS step."""
        self._check_ready()
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def step_prk(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """Stage ``counter % 4`` of an RK4 step; stages 1-2 go half a stride, stages 0 and 3 a full one."""
        self._check_ready()
        stage = self.counter % 4
        prev_timestep = timestep - (0 if self.counter % 2 else self._stride // 2)
        timestep = self.prk_timesteps[self.counter // 4 * 4]  # every stage starts from the step's first timestep
        if stage == 0:
            self.ets.append(model_output)
            self.cur_sample = sample
        if stage < 3:
            self.cur_model_output = self.cur_model_output + PRK_WEIGHTS[stage] * model_output
        else:
            model_output = self.cur_model_output + PRK_WEIGHTS[stage] * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._get_prev_sample(cur_sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def step_plms(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """A linear multistep step from up to four past noise estimates.

        Without PRK steps the first step takes two evaluations (at t and again at t - stride, averaged),
        which is why the schedule repeats its second timestep.
        """
        self._check_ready()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDMScheduler.step_plms needs the 12 Runge-Kutta evaluations of step_prk first (skip_prk_steps=False); call step(), which picks the right one")
        prev_timestep = timestep - self._stride
        if self.counter == 1:  # second half of the warm-up: redo the first step with the averaged estimate
            prev_timestep, timestep = timestep, timestep + self._stride
        else:
            self.ets = self.ets[-3:] + [model_output]
        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            model_output = (model_output + self.ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        else:
            model_output = plms_eps(self.ets)
        prev_sample = self._get_prev_sample(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def _get_prev_sample(self, sample: torch.Tensor, timestep, prev_timestep, model_output: torch.Tensor) -> torch.Tensor:
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":
            model_output = vp_eps(model_output, sample, alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5, "v_prediction")
        return pndm_transfer(sample, model_output, alpha_prod_t, alpha_prod_t_prev)
