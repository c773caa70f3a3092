"""Schedulers: schedule maths in ``schedules``, update rules in ``updates``, thin config-holding classes here."""

from .base import SchedulerMixin, SchedulerOutput
from .ddim import DDIMConfig, DDIMScheduler
from .ddpm import DDPMConfig, DDPMScheduler
from .dpmsolver_multistep import DPMSolverMultistepConfig, DPMSolverMultistepScheduler
from .euler_discrete import EulerDiscreteConfig, EulerDiscreteScheduler

__all__ = [
    "DDIMConfig",
    "DDIMScheduler",
    "DDPMConfig",
    "DDPMScheduler",
    "DPMSolverMultistepConfig",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteConfig",
    "EulerDiscreteScheduler",
    "SchedulerMixin",
    "SchedulerOutput",
]
