"""DPMSolverMultistepScheduler: DPM-Solver / DPM-Solver++ multistep samplers (Lu et al. 2022), orders 1-3."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import torch

from ..configuration import ConfigError
from ..runtime.random import randn_tensor
from . import schedules
from .base import ScheduleConfig, SchedulerOutput, SigmaSchedulerMixin, check_choice
from .updates import DPM_ALGORITHMS, dpm_solver_update, sigma_to_alpha_sigma, threshold_sample, vp_eps, vp_x0

# values the reference accepts and rewrites (algorithms / solver types of sibling schedulers)
_ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
_SOLVER_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}


@dataclasses.dataclass
class DPMSolverMultistepConfig(ScheduleConfig):
    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -math.inf
    variance_type: str | None = None
    timestep_spacing: str = "linspace"
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "sample", "v_prediction", "flow_prediction")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.algorithm_type = _ALGORITHM_ALIASES.get(self.algorithm_type, self.algorithm_type)
        self.solver_type = _SOLVER_ALIASES.get(self.solver_type, self.solver_type)

    def validate(self) -> None:
        super().validate()
        owner = type(self).__name__
        check_choice(owner, "algorithm_type", self.algorithm_type, DPM_ALGORITHMS)
        check_choice(owner, "solver_type", self.solver_type, ("midpoint", "heun"))
        check_choice(owner, "solver_order", self.solver_order, (1, 2, 3))
        check_choice(owner, "final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        check_choice(owner, "variance_type", self.variance_type, (None, "learned", "learned_range"))
        if sum([bool(self.use_beta_sigmas), bool(self.use_exponential_sigmas), bool(self.use_karras_sigmas)]) > 1:
            raise ConfigError(f"{owner}: use only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")
        if self.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and self.final_sigmas_type == "zero":
            raise ConfigError(f"{owner}: final_sigmas_type='zero' needs algorithm_type 'dpmsolver++' or 'sde-dpmsolver++'; with {self.algorithm_type!r} use final_sigmas_type='sigma_min'")
        if self.prediction_type == "flow_prediction" and self.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            raise ConfigError(f"{owner}: prediction_type='flow_prediction' needs algorithm_type 'dpmsolver++' or 'sde-dpmsolver++'")


class DPMSolverMultistepScheduler(SigmaSchedulerMixin):
    """Fast high-order solver; ``dpmsolver++`` with order 2 is the usual choice for guided sampling."""

    config_class = DPMSolverMultistepConfig
    _missing_timestep_is_last = True
    init_noise_sigma: float = 1.0

    def __init__(self, config: DPMSolverMultistepConfig | dict | None = None, **kwargs):
        cfg = self.register_config(config, kwargs)
        if cfg.use_beta_sigmas:
            schedules.require_scipy()  # fail now rather than at set_timesteps
        betas = schedules.make_betas(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.trained_betas)
        self.betas = schedules.rescale_zero_terminal_snr(betas) if cfg.rescale_betas_zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if cfg.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # a tiny positive value keeps the log-SNR finite
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod).to("cpu")
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.linspace(0, cfg.num_train_timesteps - 1, cfg.num_train_timesteps, dtype=np.float32)[::-1].copy())
        self._reset_solver_state()

    def _reset_solver_state(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._reset_step_index()

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None, mu: float | None = None, timesteps: list[int] | None = None) -> None:
        """Timesteps and sigmas for ``num_inference_steps`` steps, or for a custom ``timesteps`` list."""
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError("mu= needs use_dynamic_shifting=True and time_shift_type='exponential' in the scheduler config")
            cfg.flow_shift = float(np.exp(mu))
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            special = [k for k in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas") if cfg[k]]
            if special:
                raise ValueError(f"custom timesteps cannot be combined with {special[0]}=True")
            ts = torch.from_numpy(np.array(timesteps).astype(np.int64))
        else:
            clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped)
            last_timestep = (cfg.num_train_timesteps - clipped_idx).numpy().item()
            ts = schedules.dpm_spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset, last_timestep)
        ts, sigmas = self._sigma_ladder(ts, num_inference_steps)
        self.sigmas = schedules.append_final_sigma(sigmas, cfg.final_sigmas_type, self.alphas_cumprod)
        self.timesteps = ts.to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(ts)
        self._reset_solver_state()

    def _sigma_ladder(self, timesteps: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas) for the configured sigma spacing; the timesteps follow the sigmas."""
        cfg = self.config
        train_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod.cpu())
        log_sigmas = torch.from_numpy(np.log(train_sigmas.numpy()))
        lo, hi = train_sigmas[0].item(), train_sigmas[-1].item()
        if cfg.use_flow_sigmas:
            sigmas = schedules.flow_sigmas(cfg.num_train_timesteps, n, cfg.flow_shift)
            return sigmas * cfg.num_train_timesteps, sigmas
        if cfg.use_karras_sigmas:
            sigmas = schedules.karras_sigmas(lo, hi, n)
        elif cfg.use_lu_lambdas:
            sigmas = torch.from_numpy(np.exp(schedules.lu_lambdas(log_sigmas[0].item(), log_sigmas[-1].item(), n).numpy()))
        elif cfg.use_exponential_sigmas:
            sigmas = schedules.exponential_sigmas(lo, hi, n)
        elif cfg.use_beta_sigmas:
            sigmas = schedules.beta_sigmas(lo, hi, n)
        else:
            return timesteps, schedules.interp_sigmas(timesteps, train_sigmas)
        ts = schedules.sigma_to_t(sigmas, log_sigmas)
        rounded = (cfg.use_karras_sigmas or cfg.use_lu_lambdas) and cfg.beta_schedule != "squaredcos_cap_v2"
        return (ts.round() if rounded else ts), sigmas

    def _alpha_sigma(self, sigma):
        return sigma_to_alpha_sigma(sigma, self.config.use_flow_sigmas)

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """The model output in the solver's parameterisation: x_0 for the ++ variants, epsilon otherwise."""
        if sample is None:
            if len(args) < 2:
                raise ValueError("convert_model_output needs sample= (the current noisy sample)")
            sample = args[1]
        cfg = self.config
        sigma = self.sigmas[self.step_index]
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        if cfg.variance_type in ("learned", "learned_range") and cfg.prediction_type == "epsilon":
            model_output = model_output[:, :3]  # the reference keeps 3 channels (a pixel model's mean)
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            if cfg.prediction_type == "flow_prediction":
                x0_pred = sample - sigma * model_output
            else:
                x0_pred = vp_x0(model_output, sample, alpha_t, sigma_t, cfg.prediction_type)
            return threshold_sample(x0_pred, cfg.dynamic_thresholding_ratio, cfg.sample_max_value) if cfg.thresholding else x0_pred
        epsilon = vp_eps(model_output, sample, alpha_t, sigma_t, cfg.prediction_type)
        if cfg.thresholding:
            x0_pred = threshold_sample((sample - sigma_t * epsilon) / alpha_t, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            epsilon = (sample - alpha_t * x0_pred) / sigma_t
        return epsilon

    def _solver_order_now(self) -> int:
        """The order this step can use: lower at the start (too few past outputs) and, if asked, at the end."""
        cfg, n, i = self.config, len(self.timesteps), self.step_index
        lower_final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
        lower_second = i == n - 2 and cfg.lower_order_final and n < 15
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
            return 1
        if cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_second:
            return 2
        return 3

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x_t -> x_{t-1} from this and up to two earlier model outputs."""
        cfg = self.config
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call scheduler.set_timesteps(num_inference_steps) before step()")
        if self.step_index is None:
            self._init_step_index(timestep)
        order = self._solver_order_now()
        model_output = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        sample = sample.to(torch.float32)
        noise = None
        if cfg.algorithm_type.startswith("sde-"):
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)
        i = self.step_index
        sigmas = [self.sigmas[i + 1 - k] for k in range(order + 1)]  # sigma_next, sigma_s0, sigma_s1, ...
        outputs = self.model_outputs[::-1][:order]  # newest first
        prev_sample = dpm_solver_update(sample, outputs, sigmas, cfg.algorithm_type, cfg.solver_type, noise, cfg.use_flow_sigmas)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        x0 = model_output if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++") else None
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """Forward process at ``timesteps`` (which must be in ``self.timesteps``), in VP form."""
        sigma = self._schedule_sigmas(original_samples, timesteps)
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        return alpha_t * original_samples + sigma_t * noise
