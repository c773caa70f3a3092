"""Schedulers: schedule maths in ``schedules``, update rules in ``updates``, thin config-holding classes here."""

from .base import SchedulerMixin, SchedulerOutput
from .ddim import DDIMConfig, DDIMScheduler
from .ddpm import DDPMConfig, DDPMScheduler
from .dpmsolver_multistep import DPMSolverMultistepConfig, DPMSolverMultistepScheduler
from .euler_ancestral_discrete import EulerAncestralDiscreteConfig, EulerAncestralDiscreteScheduler
from .euler_discrete import EulerDiscreteConfig, EulerDiscreteScheduler
from .lcm import LCMConfig, LCMScheduler, LCMSchedulerOutput
from .lms_discrete import LMSDiscreteConfig, LMSDiscreteScheduler
from .pndm import PNDMConfig, PNDMScheduler

__all__ = [
    "DDIMConfig",
    "DDIMScheduler",
    "DDPMConfig",
    "DDPMScheduler",
    "DPMSolverMultistepConfig",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteConfig",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteConfig",
    "EulerDiscreteScheduler",
    "LCMConfig",
    "LCMScheduler",
    "LCMSchedulerOutput",
    "LMSDiscreteConfig",
    "LMSDiscreteScheduler",
    "PNDMConfig",
    "PNDMScheduler",
    "SchedulerMixin",
    "SchedulerOutput",
]
