"""Update rules as small pure functions of tensors (k-diffusion style).

Scalars such as ``alpha`` and ``sigma`` are 0-d tensors. The expressions keep the reference's order
of floating-point operations so that a step reproduces it exactly, not just closely.

Variance-preserving notation: ``x_t = alpha * x_0 + sigma * eps`` with ``alpha = sqrt(alpha_bar)`` and
``sigma = sqrt(1 - alpha_bar)``; the variance-exploding sigma of Euler / DPM-Solver is ``sigma / alpha``.
"""

from __future__ import annotations

import numpy as np
import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DPM_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")


def _unknown_prediction(prediction_type: str, allowed=PREDICTION_TYPES) -> ValueError:
    return ValueError(f"prediction_type={prediction_type!r} is not supported; expected one of {list(allowed)}")


def vp_x0(model_output: torch.Tensor, sample: torch.Tensor, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """The clean sample the model predicts, from its epsilon / sample / v output."""
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * model_output
    raise _unknown_prediction(prediction_type)


def vp_eps(model_output: torch.Tensor, sample: torch.Tensor, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """The noise the model predicts, from its epsilon / sample / v output."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - alpha * model_output) / sigma
    if prediction_type == "v_prediction":
        return alpha * model_output + sigma * sample
    raise _unknown_prediction(prediction_type)


def threshold_sample(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen, arXiv:2205.11487): clamp each item to its ``ratio`` quantile of |x|."""
    dtype = x0.dtype
    batch, channels, *rest = x0.shape
    flat = x0.float() if dtype not in (torch.float32, torch.float64) else x0
    flat = flat.reshape(batch, channels * np.prod(rest))  # b (c ...)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # b 1
    return (torch.clamp(flat, -s, s) / s).reshape(batch, channels, *rest).to(dtype)


# --- DDIM / DDPM (alpha_bar indexed by training timestep) ---


def ddim_variance(alpha_prod_t, alpha_prod_t_prev):
    """sigma_t^2 / eta^2 of DDIM (eq. 16): the DDPM posterior variance between the two steps."""
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_prod_t_prev, std_dev_t, noise: torch.Tensor | None = None) -> torch.Tensor:
    """x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps (+ s noise)."""
    direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * eps
    prev = alpha_prod_t_prev ** (0.5) * x0 + direction
    return prev if noise is None else prev + std_dev_t * noise


def ddpm_posterior_mean(x0: torch.Tensor, sample: torch.Tensor, alpha_prod_t, alpha_prod_t_prev) -> torch.Tensor:
    """Mean of q(x_{t-1} | x_t, x_0) (DDPM eq. 7)."""
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    x0_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
    sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    return x0_coeff * x0 + sample_coeff * sample


def ddpm_variance(alpha_prod_t, alpha_prod_t_prev, variance_type: str, predicted_variance=None):
    """The step's variance in the form ``variance_type`` asks for (a log for the *_log / learned_range kinds)."""
    current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
    variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
    if variance_type == "fixed_small":
        return variance
    if variance_type == "fixed_small_log":
        return torch.exp(0.5 * torch.log(variance))
    if variance_type == "fixed_large":
        return current_beta_t
    if variance_type == "fixed_large_log":
        return torch.log(current_beta_t)
    if predicted_variance is None and variance_type in ("learned", "learned_range"):
        raise ValueError(f"variance_type={variance_type!r} needs a model output with twice the sample's channels (mean and variance)")
    if variance_type == "learned":
        return predicted_variance
    if variance_type == "learned_range":
        frac = (predicted_variance + 1) / 2
        return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
    return variance


def ddpm_noise(variance, variance_type: str, noise: torch.Tensor) -> torch.Tensor:
    """The noise term added to the posterior mean."""
    if variance_type == "fixed_small_log":
        return variance * noise
    if variance_type == "learned_range":
        return torch.exp(0.5 * variance) * noise
    return (variance**0.5) * noise


# --- sigma-based samplers (variance-exploding sigma per step) ---


def sigma_to_alpha_sigma(sigma, flow: bool = False):
    """VE sigma -> VP (alpha, sigma); with flow sigmas alpha = 1 - sigma."""
    if flow:
        return 1 - sigma, sigma
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def euler_x0(model_output: torch.Tensor, sample: torch.Tensor, sigma, sigma_hat, prediction_type: str) -> torch.Tensor:
    if prediction_type in ("sample", "original_sample"):
        return model_output
    if prediction_type == "epsilon":
        return sample - sigma_hat * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    raise _unknown_prediction(prediction_type, PREDICTION_TYPES + ("original_sample",))


def euler_step(sample: torch.Tensor, x0: torch.Tensor, sigma_hat, sigma_next) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx/dsigma = (x - x0) / sigma."""
    derivative = (sample - x0) / sigma_hat
    return sample + derivative * (sigma_next - sigma_hat)


# --- DPM-Solver(++) multistep (Lu et al. 2022); m_i are converted model outputs, newest first ---


def _combine(sample, sample_coeff, terms, noise_coeff=None, noise=None):
    x = sample_coeff * sample
    for coeff, d in terms:
        x = x + coeff * d
    return x if noise_coeff is None else x + noise_coeff * noise


def _dpm_base(algorithm_type: str, alpha_t, sigma_t, alpha_s, sigma_s, h):
    """(sample coeff, D0 coeff, noise coeff) shared by every order."""
    if algorithm_type == "dpmsolver++":
        return sigma_t / sigma_s, -(alpha_t * (torch.exp(-h) - 1.0)), None
    if algorithm_type == "dpmsolver":
        return alpha_t / alpha_s, -(sigma_t * (torch.exp(h) - 1.0)), None
    if algorithm_type == "sde-dpmsolver++":
        return sigma_t / sigma_s * torch.exp(-h), alpha_t * (1 - torch.exp(-2.0 * h)), sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h))
    if algorithm_type == "sde-dpmsolver":
        return alpha_t / alpha_s, -(2.0 * (sigma_t * (torch.exp(h) - 1.0))), sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0)
    raise ValueError(f"algorithm_type={algorithm_type!r} is not supported; expected one of {list(DPM_ALGORITHMS)}")


def _dpm_d1_coeff(algorithm_type: str, solver_type: str, alpha_t, sigma_t, h):
    """Coefficient of the first divided difference D1 (midpoint or heun form)."""
    if solver_type == "midpoint":
        if algorithm_type == "dpmsolver++":
            return -(0.5 * (alpha_t * (torch.exp(-h) - 1.0)))
        if algorithm_type == "dpmsolver":
            return -(0.5 * (sigma_t * (torch.exp(h) - 1.0)))
        if algorithm_type == "sde-dpmsolver++":
            return 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h)))
        return -(sigma_t * (torch.exp(h) - 1.0))  # sde-dpmsolver
    if algorithm_type == "dpmsolver++":
        return alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
    if algorithm_type == "dpmsolver":
        return -(sigma_t * ((torch.exp(h) - 1.0) / h - 1.0))
    if algorithm_type == "sde-dpmsolver++":
        return alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
    return -(2.0 * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)))  # sde-dpmsolver


def _dpm_d2_coeff(algorithm_type: str, alpha_t, sigma_t, h):
    if algorithm_type == "dpmsolver++":
        return -(alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5))
    if algorithm_type == "dpmsolver":
        return -(sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5))
    if algorithm_type == "sde-dpmsolver++":
        return alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
    raise NotImplementedError(f"algorithm_type={algorithm_type!r} has no third-order update; use solver_order<=2 or 'sde-dpmsolver++'")


def _lambda(alpha, sigma):
    return torch.log(alpha) - torch.log(sigma)


def dpm_solver_update(sample: torch.Tensor, outputs: list[torch.Tensor], sigmas: list, algorithm_type: str, solver_type: str = "midpoint", noise=None, flow: bool = False) -> torch.Tensor:
    """One multistep DPM-Solver update of order ``len(outputs)`` (1 to 3).

    ``outputs`` = [m0, m1, ...] newest first; ``sigmas`` = [sigma_next, sigma_s0, sigma_s1, ...] (VE sigmas).
    """
    order = len(outputs)
    (alpha_t, sigma_t), *prev = [sigma_to_alpha_sigma(s, flow) for s in sigmas[: order + 1]]
    lam_t, lams = _lambda(alpha_t, sigma_t), [_lambda(a, s) for a, s in prev]
    h = lam_t - lams[0]
    sample_coeff, k0, noise_coeff = _dpm_base(algorithm_type, alpha_t, sigma_t, prev[0][0], prev[0][1], h)
    m0 = outputs[0]
    if order == 1:
        terms = [(k0, m0)]
    elif order == 2:
        r0 = (lams[0] - lams[1]) / h
        d1 = (1.0 / r0) * (m0 - outputs[1])
        terms = [(k0, m0), (_dpm_d1_coeff(algorithm_type, solver_type, alpha_t, sigma_t, h), d1)]
    else:
        k2 = _dpm_d2_coeff(algorithm_type, alpha_t, sigma_t, h)
        r0, r1 = (lams[0] - lams[1]) / h, (lams[1] - lams[2]) / h
        d1_0, d1_1 = (1.0 / r0) * (m0 - outputs[1]), (1.0 / r1) * (outputs[1] - outputs[2])
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        terms = [(k0, m0), (_dpm_d1_coeff(algorithm_type, "heun", alpha_t, sigma_t, h), d1), (k2, d2)]
    return _combine(sample, sample_coeff, terms, noise_coeff, noise)


# --- PNDM (Liu et al. 2022, arXiv:2202.09778): eps-based transfer, RK4 warm-up, linear multistep ---

PRK_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # RK4 weights of the four model evaluations of one PRK step


def pndm_transfer(sample: torch.Tensor, eps: torch.Tensor, alpha_prod_t, alpha_prod_t_prev) -> torch.Tensor:
    """x_{t-delta} from x_t and the noise estimate (PNDM eq. 9)."""
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
    denom = alpha_prod_t * beta_prod_t_prev ** (0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** (0.5)
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * eps / denom


def plms_eps(ets: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the last 2-4 noise estimates (oldest first)."""
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])


# --- ancestral sampling and linear multistep in sigma ---


def ancestral_sigmas(sigma_from, sigma_to):
    """(sigma_up, sigma_down): split the step to ``sigma_to`` into a deterministic part and fresh noise (eta = 1)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_up, sigma_down


def lms_coefficient(nodes, j: int, lower: float, upper: float) -> float:
    """Integral over [lower, upper] of the j-th Lagrange basis polynomial on ``nodes`` (float64).

    The integrand has degree len(nodes) - 1, so Gauss-Legendre with len(nodes) points is exact.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    xi, w = np.polynomial.legendre.leggauss(len(nodes))
    half = (upper - lower) / 2
    tau = half * xi + (upper + lower) / 2
    basis = np.ones_like(tau)
    for k, node in enumerate(nodes):
        if k != j:
            basis *= (tau - node) / (nodes[j] - node)
    return float(half * np.dot(w, basis))


# --- latent consistency models (Luo et al. 2023) ---


def lcm_boundary_scalings(timestep, timestep_scaling: float, sigma_data: float = 0.5):
    """(c_skip, c_out) of the consistency parameterisation: c_skip -> 1, c_out -> 0 as t -> 0."""
    scaled_timestep = timestep * timestep_scaling
    c_skip = sigma_data**2 / (scaled_timestep**2 + sigma_data**2)
    c_out = scaled_timestep / (scaled_timestep**2 + sigma_data**2) ** 0.5
    return c_skip, c_out
