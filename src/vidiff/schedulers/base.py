"""SchedulerMixin: config handling, loading and saving shared by every scheduler, plus the step output.

A scheduler is a thin holder of a typed config and the schedule tensors built from it; the maths
lives in :mod:`.schedules` and :mod:`.updates`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..configuration import Config, ConfigError, ConfigMixin
from . import schedules

logger = logging.getLogger(__name__)

# The reference's KarrasDiffusionSchedulers: configs of these classes may be swapped for one another.
KARRAS_DIFFUSION_SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
)  # fmt: skip

# from_pretrained keyword arguments that locate the file rather than configure the scheduler.
HUB_KWARGS = ("cache_dir", "revision", "local_files_only", "token", "force_download")


@dataclasses.dataclass
class SchedulerOutput:
    """What ``step`` returns: the next sample and, where the scheduler has it, its x_0 prediction."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def to_tuple(self) -> tuple:
        return tuple(v for v in (self.prev_sample, self.pred_original_sample) if v is not None)

    def __getitem__(self, key: int | slice | str):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


def check_choice(owner: str, key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{owner}: {key}={value!r} is not supported; expected one of {list(allowed)}")


@dataclasses.dataclass
class ScheduleConfig(Config):
    """Keys every scheduler here shares: the training noise schedule and the inference spacing."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    beta_schedules: ClassVar[tuple[str, ...]] = schedules.BETA_SCHEDULES
    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "sample", "v_prediction")

    def __post_init__(self) -> None:
        if self.trained_betas is not None and not isinstance(self.trained_betas, tuple):
            self.trained_betas = tuple(float(b) for b in np.asarray(self.trained_betas, dtype=np.float64).ravel())

    def validate(self) -> None:
        owner = type(self).__name__
        if self.trained_betas is None:
            check_choice(owner, "beta_schedule", self.beta_schedule, self.beta_schedules)
        elif len(self.trained_betas) != self.num_train_timesteps:
            raise ConfigError(f"{owner}: trained_betas has {len(self.trained_betas)} values but num_train_timesteps={self.num_train_timesteps}")
        if self.num_train_timesteps < 2:
            raise ConfigError(f"{owner}: num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        check_choice(owner, "prediction_type", self.prediction_type, self.prediction_types)
        check_choice(owner, "timestep_spacing", self.timestep_spacing, schedules.TIMESTEP_SPACINGS)


def _explicit_values(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys a config really set: private keys and the ones that only hold a class default are dropped.

    Like the reference, defaults are not carried over, so ``B.from_config(a.config)`` keeps B's own
    defaults for whatever A's config did not set, while keys A does not use but its file set (A's
    ``extra_keys``, e.g. ``clip_sample`` in an Euler config) are passed on.
    """
    if config is None:
        return {}
    values = {**(getattr(config, "_extra_keys", None) or {}), **dict(config)}
    defaults = set(values.pop("_use_default_values", None) or ()) | set(getattr(config, "_use_default_values", None) or ())
    return {k: v for k, v in values.items() if k not in defaults and not k.startswith("_")}


def extra_keys(config: Config) -> dict[str, Any]:
    """Keys of the loaded config that this class does not use; kept, saved and passed on by ``from_config``."""
    return dict(getattr(config, "_extra_keys", None) or {})


class SchedulerMixin(ConfigMixin):
    """Base of the schedulers: ``from_pretrained``, ``from_config``, ``save_pretrained``, ``compatibles``."""

    config_name = "scheduler_config.json"
    config_class: ClassVar[type[ScheduleConfig]] = ScheduleConfig
    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_DIFFUSION_SCHEDULERS
    has_compatibles: ClassVar[bool] = True
    order: ClassVar[int] = 1

    def register_config(self, config: Config | Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> Config:
        """Store the config, noting which keys hold only defaults and which loaded keys this class ignores."""
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"{type(self).__name__}: config must be a {self.config_class.__name__} or a dict, got {type(config).__name__}")
        if isinstance(config, self.config_class) and not kwargs:
            cfg, given, extra = config, set(config) - set(getattr(config, "_use_default_values", ())), extra_keys(config)
        else:
            values = _explicit_values(config)
            fields = set(self.config_class._field_names())
            extra = {k: v for k, v in values.items() if k not in fields}
            if extra:
                logger.debug("%s: keeping config keys it does not use: %s", type(self).__name__, sorted(extra))
            cfg = self.config_class.from_dict({k: v for k, v in values.items() if k in fields}, strict=config is None, **kwargs)
            given = set(values) | set(kwargs)
        self._set_config(cfg, defaults=set(cfg) - given, extra=extra)
        return cfg

    def _set_config(self, cfg: Config, defaults: set[str], extra: Mapping[str, Any]) -> None:
        object.__setattr__(cfg, "_use_default_values", tuple(sorted(defaults)))
        object.__setattr__(cfg, "_extra_keys", dict(extra))
        object.__setattr__(self, "_config", cfg)

    def register_to_config(self, **changes: Any) -> None:
        """Replace config values in place (the schedule tensors are not rebuilt, as in the reference)."""
        old = self.config
        known = {k: v for k, v in changes.items() if k in old}
        extra = {**extra_keys(old), **{k: v for k, v in changes.items() if k not in old}}
        self._set_config(old.replace(**known), set(getattr(old, "_use_default_values", ())) - set(changes), extra)

    def config_dict_for_saving(self) -> dict[str, Any]:
        return {**extra_keys(self.config), **super().config_dict_for_saving()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, return_unused_kwargs: bool = False, **overrides: Any):
        """Build from any scheduler's config (ours, a dict or the reference's FrozenDict) plus overrides.

        Keys this class does not use are kept aside (``extra_keys``) and passed on, as in the reference, so
        the config of another scheduler works and round-trips.
        """
        if isinstance(config, (str, os.PathLike)):
            raise TypeError(f"{cls.__name__}.from_config takes a config mapping; to load {str(config)!r} use {cls.__name__}.from_pretrained(path, subfolder='scheduler')")
        values = _explicit_values(config)
        fields = set(cls.config_class._field_names())
        unused = {k: v for k, v in {**values, **overrides}.items() if k not in fields}
        if set(overrides) - fields:
            logger.debug("%s.from_config: ignoring arguments it does not use: %s", cls.__name__, sorted(set(overrides) - fields))
        obj = cls(values, **{k: v for k, v in overrides.items() if k in fields})
        return (obj, unused) if return_unused_kwargs else obj

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """Load ``scheduler_config.json`` from a folder or hub id; other keyword arguments override config keys."""
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        values = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        class_name = values.get("_class_name")
        if isinstance(class_name, str) and class_name != cls.__name__ and class_name.endswith("Scheduler"):
            logger.info("%s: loading a config written for %s", cls.__name__, class_name)
        return cls.from_config(values, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> Path:
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported; save locally and upload with huggingface_hub")
        return self.save_config(save_directory)

    @property
    def compatibles(self) -> list[type]:
        return self._get_compatibles()

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        import vidiff.schedulers as package

        names = dict.fromkeys((cls.__name__, *cls._compatibles))
        return [getattr(package, n) for n in names if hasattr(package, n)]

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def vp_coeffs(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) at ``timesteps``, shaped to broadcast against ``like``."""
    alphas_cumprod = alphas_cumprod.to(device=like.device, dtype=like.dtype)
    timesteps = timesteps.to(like.device)
    alpha = (alphas_cumprod[timesteps] ** 0.5).flatten()
    sigma = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten()
    shape = alpha.shape + (1,) * (like.ndim - 1)
    return alpha.reshape(shape), sigma.reshape(shape)


class AlphaBarSchedulerMixin(SchedulerMixin):
    """DDIM and DDPM: alpha_bar indexed by integer training timestep."""

    init_noise_sigma: float = 1.0

    def _build_alphas(self, cfg: ScheduleConfig, schedule_names: Sequence[str] = schedules.BETA_SCHEDULES) -> None:
        betas = schedules.make_betas(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.trained_betas, schedule_names)
        self.betas = schedules.rescale_zero_terminal_snr(betas) if cfg.rescale_betas_zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, cfg.num_train_timesteps)[::-1].copy().astype(np.int64))

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def _check_steps(self, num_inference_steps: int) -> None:
        limit = self.config.num_train_timesteps
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        if num_inference_steps > limit:
            raise ValueError(f"num_inference_steps={num_inference_steps} is larger than num_train_timesteps={limit}; the model was trained on {limit} timesteps at most")

    def _clip_or_threshold(self, x0: torch.Tensor) -> torch.Tensor:
        from .updates import threshold_sample

        cfg = self.config
        if cfg.thresholding:
            return threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) at training ``timesteps``."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device)
        alpha, sigma = vp_coeffs(self.alphas_cumprod, timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target alpha * noise - sigma * sample."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=sample.device)
        alpha, sigma = vp_coeffs(self.alphas_cumprod, timesteps, sample)
        return alpha * noise - sigma * sample


class SigmaSchedulerMixin(SchedulerMixin):
    """DPM-Solver and Euler: a sigma per inference step and a running step index.

    The step index starts at ``begin_index`` when a pipeline set one (img2img starts part-way), else at
    the position of the first timestep passed to ``step`` / ``scale_model_input``.
    """

    _missing_timestep_is_last: ClassVar[bool] = False

    def _reset_step_index(self) -> None:
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule; the second match when it occurs twice (img2img)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        candidates = (schedule == timestep).nonzero()
        if len(candidates) == 0:
            if self._missing_timestep_is_last:
                return len(self.timesteps) - 1
            raise ValueError(f"{type(self).__name__}: timestep {timestep} is not in scheduler.timesteps; call set_timesteps first and pass one of scheduler.timesteps")
        return candidates[1 if len(candidates) > 1 else 0].item()

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self.begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _schedule_sigmas(self, like: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The sigma of each of ``timesteps``, shaped (b, 1, ...) to broadcast against ``like``."""
        sigmas = self.sigmas.to(device=like.device, dtype=like.dtype)
        if like.device.type == "mps" and torch.is_floating_point(timesteps):
            schedule, timesteps = self.timesteps.to(like.device, dtype=torch.float32), timesteps.to(like.device, dtype=torch.float32)
        else:
            schedule, timesteps = self.timesteps.to(like.device), timesteps.to(like.device)
        if self.begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        else:
            indices = [self.step_index if self.step_index is not None else self.begin_index] * timesteps.shape[0]
        sigma = sigmas[indices].flatten()
        return sigma.reshape(sigma.shape + (1,) * (like.ndim - 1))
