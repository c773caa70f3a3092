"""Noise schedules as plain functions: betas, timestep spacings and sigma ladders.

Every function returns a tensor. Where the reference computes with numpy (linspace, arange with a
float step, interp, float64 sigma ladders) these do the same internally, so timesteps and sigmas
match it bit for bit rather than to within a rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..configuration import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def _alpha_bar_fn(kind: str):
    if kind == "cosine":
        return lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    if kind == "exp":
        return lambda t: math.exp(t * -12.0)
    if kind == "laplace":

        def laplace(t: float) -> float:
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

        return laplace
    raise ValueError(f"alpha_transform_type={kind!r} is not supported; expected 'cosine', 'exp' or 'laplace'")


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine") -> torch.Tensor:
    """Betas that discretise a continuous alpha_bar(t) on [0, 1] (cosine = squaredcos_cap_v2)."""
    alpha_bar = _alpha_bar_fn(alpha_transform_type)
    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: Sequence[float] | None = None,
    allowed: Sequence[str] = BETA_SCHEDULES,
) -> torch.Tensor:
    """The training betas (float32, length num_train_timesteps); ``trained_betas`` wins over the schedule."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule not in allowed:
        raise ConfigError(f"beta_schedule={beta_schedule!r} is not supported here; expected one of {list(allowed)}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps)
    if beta_schedule == "laplace":
        return betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="laplace")
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    raise ConfigError(f"beta_schedule={beta_schedule!r} has no implementation")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has zero SNR (arXiv:2305.08891, Algorithm 1)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Variance-exploding sigmas sqrt((1 - a) / a), in training-timestep order."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def check_spacing(spacing: str) -> None:
    if spacing not in TIMESTEP_SPACINGS:
        raise ConfigError(f"timestep_spacing={spacing!r} is not supported; expected one of {list(TIMESTEP_SPACINGS)}")


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0, *, integer: bool = True) -> torch.Tensor:
    """Descending inference timesteps (table 2 of arXiv:2305.08891).

    ``integer=True`` (DDIM, DDPM) rounds to int64; ``integer=False`` (Euler) keeps float32 and does not
    round the linspace spacing.
    """
    check_spacing(spacing)
    T, n = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        if integer:
            ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        else:
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    elif spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64 if integer else np.float32)
        ts += steps_offset
    else:  # trailing
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64 if integer else np.float32)
        ts -= 1
    return torch.from_numpy(ts)


def dpm_spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0, last_timestep: int | None = None) -> torch.Tensor:
    """DPM-Solver's spacing: n + 1 points with the final one dropped, ending at ``last_timestep``."""
    check_spacing(spacing)
    n = num_inference_steps
    last = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1].copy().astype(np.int64)
        ts += steps_offset
    else:  # trailing
        ts = np.arange(last, 0, -num_train_timesteps / n).round().copy().astype(np.int64)
        ts -= 1
    return torch.from_numpy(ts)


def interp_sigmas(timesteps: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Sigmas at (possibly fractional) timesteps by linear interpolation of the training sigmas (float64)."""
    sig = sigmas.numpy()
    return torch.from_numpy(np.interp(timesteps.numpy(), np.arange(0, len(sig)), sig))


def log_linear_sigmas(sigmas: torch.Tensor, num_inference_steps: int) -> torch.Tensor:
    """``interpolation_type='log_linear'``: n + 1 sigmas evenly spaced in log sigma, descending (float32)."""
    sig = sigmas.numpy()
    return torch.linspace(np.log(sig[-1]), np.log(sig[0]), num_inference_steps + 1).exp()


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: descending sigmas evenly spaced in sigma^(1/rho) (float64)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.from_numpy((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> torch.Tensor:
    """Descending sigmas evenly spaced in log sigma (float64)."""
    return torch.from_numpy(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps)))


def require_scipy() -> None:
    """Beta sigmas need scipy's Beta quantile function, as in the reference."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        raise ImportError("use_beta_sigmas=True needs scipy (pip install scipy), as in the reference; or use use_karras_sigmas / use_exponential_sigmas") from None


def beta_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Sigmas at the quantiles of a Beta(alpha, beta) distribution (arXiv:2407.12173); needs scipy."""
    require_scipy()
    import scipy.stats

    ppfs = [scipy.stats.beta.ppf(q, alpha, beta) for q in 1 - np.linspace(0, 1, num_inference_steps)]
    return torch.from_numpy(np.array([sigma_min + ppf * (sigma_max - sigma_min) for ppf in ppfs]))


def lu_lambdas(lambda_min: float, lambda_max: float, num_inference_steps: int) -> torch.Tensor:
    """Lu et al. (DPM-Solver++) schedule: evenly spaced in log sigma (float64), descending."""
    ramp = np.linspace(0, 1, num_inference_steps)
    return torch.from_numpy((lambda_max + ramp * (lambda_min - lambda_max)) ** 1.0)


def flow_sigmas(num_train_timesteps: int, num_inference_steps: int, shift: float) -> torch.Tensor:
    """Flow-matching sigmas in (0, 1], shifted, descending (float64), final zero not included."""
    sig = 1.0 - np.linspace(1, 1 / num_train_timesteps, num_inference_steps + 1)
    return torch.from_numpy(np.flip(shift * sig / (1 + (shift - 1) * sig))[:-1].copy())


def sigma_to_t(sigmas: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional training timesteps whose sigma is ``sigmas``, interpolating in log sigma (float64)."""
    sig, log_table = sigmas.numpy(), log_sigmas.numpy()
    log_sigma = np.log(np.maximum(sig, 1e-10))
    dists = log_sigma - log_table[:, np.newaxis]  # (train, n)
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_table.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_table[low_idx], log_table[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return torch.from_numpy(np.asarray((1 - w) * low_idx + w * high_idx, dtype=np.float64))


def append_final_sigma(sigmas: torch.Tensor, final_sigmas_type: str, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Append the sigma after the last step (0, or the smallest training sigma) and cast to float32."""
    if final_sigmas_type == "sigma_min":
        last = float(((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5)
    elif final_sigmas_type == "zero":
        last = 0.0
    else:
        raise ConfigError(f"final_sigmas_type={final_sigmas_type!r} is not supported; expected 'zero' or 'sigma_min'")
    return torch.from_numpy(np.concatenate([sigmas.numpy(), [last]]).astype(np.float32))


def pndm_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str, steps_offset: int, skip_prk_steps: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """PNDM's (Runge-Kutta, linear multistep) timesteps, both descending int64.

    Without PRK steps the second timestep is repeated (the first PLMS step is a two-evaluation warm-up);
    with them the last four spaced timesteps are walked by RK4 at half strides (12 evaluations) and the
    PLMS steps take the remaining ones.
    """
    ascending = spaced_timesteps(spacing, num_train_timesteps, num_inference_steps, steps_offset).numpy()[::-1]
    if skip_prk_steps:
        plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        return torch.zeros(0, dtype=torch.int64), torch.from_numpy(plms.astype(np.int64))
    if num_inference_steps < 4:
        raise ValueError(f"PNDM with skip_prk_steps=False needs num_inference_steps >= 4 (its Runge-Kutta warm-up spans 4 steps), got {num_inference_steps}; use more steps or skip_prk_steps=True")
    half_stride = num_train_timesteps // num_inference_steps // 2
    prk = ascending[-4:].repeat(2) + np.tile(np.array([0, half_stride]), 4)  # t, t + stride/2 for each
    prk = prk[:-1].repeat(2)[1:-1][::-1]
    return torch.from_numpy(prk.astype(np.int64)), torch.from_numpy(ascending[:-3][::-1].astype(np.int64))


def lcm_origin_timesteps(num_train_timesteps: int, original_inference_steps: int, strength: float = 1.0) -> torch.Tensor:
    """The ascending timestep grid the LCM was distilled on: every ``T // original_steps``-th, ending at k * n - 1."""
    k = num_train_timesteps // original_inference_steps
    return torch.from_numpy(np.arange(1, int(original_inference_steps * strength) + 1, dtype=np.int64) * k - 1)


def lcm_timesteps(origin_timesteps: torch.Tensor, num_inference_steps: int) -> torch.Tensor:
    """``num_inference_steps`` descending timesteps picked evenly (floored) from the distillation grid."""
    origin = origin_timesteps.numpy()[::-1]
    indices = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
    return torch.from_numpy(origin[indices].copy())
