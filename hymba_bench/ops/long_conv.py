"""Hyena's long causal convolution, and the modal filter that gives it a constant-size decode state.

    y[b, d, t] = sum_{j <= t} h[d, t - j] u[b, d, j]          u: (B, D, L)   h: (D, L)

`long_conv_fft` is the fast path (zero-padded FFT, O(L log L)); `long_conv_ref` is the direct
Toeplitz product, O(L^2), its twin for tests.

StripedHyena parametrises each channel's filter as a sum of damped complex exponentials,

    h[d, t] = Re sum_n R[d, n] lambda[d, n]^t,     lambda = exp(-rate) * exp(i * theta),

so the same convolution is a diagonal linear recurrence s_t = lambda s_{t-1} + u_t, y_t = Re <R, s_t>:
prefill and training use the FFT, decode carries s (D x modes complex numbers per sequence).
Powers are built from a magnitude and a phase reduced modulo 2 pi in float64, so t * theta stays
accurate at 8K positions where a float32 complex exponential would drift.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def long_conv_fft(u: Tensor, h: Tensor) -> Tensor:
    """u: (B, D, L), h: (D, L) -> (B, D, L), causal, computed in float32."""
    length = u.shape[-1]
    n = 1 << (2 * length - 1).bit_length()  # >= 2L - 1: no circular wrap-around
    spectrum = torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(h.float(), n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :length].to(u.dtype)


def long_conv_ref(u: Tensor, h: Tensor) -> Tensor:
    length = u.shape[-1]
    t = torch.arange(length, device=u.device)
    lag = t[:, None] - t[None, :]  # (L, L): t - j
    toeplitz = h.float()[:, lag.clamp(min=0)] * (lag >= 0)  # (D, L, L)
    return torch.einsum("dtj,bdj->bdt", toeplitz, u.float()).to(u.dtype)


def modal_powers(rate: Tensor, theta: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Re and Im of lambda^t for t = 0..length-1: rate, theta (D, N) -> two (D, N, L) tensors."""
    t = torch.arange(length, device=rate.device, dtype=torch.float64)
    magnitude = torch.exp(-rate.float()[..., None] * t.float())
    phase = torch.remainder(theta.double()[..., None] * t, 2 * math.pi).float()
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


def modal_filter(powers: tuple[Tensor, Tensor], residues: Tensor) -> Tensor:
    """h (D, L) = Re sum_n R lambda^t from `modal_powers`; residues (D, N, 2) hold Re R and Im R."""
    re, im = powers
    r = residues.float()
    return (r[..., 0, None] * re - r[..., 1, None] * im).sum(1)


def modal_state(u: Tensor, powers: tuple[Tensor, Tensor]) -> Tensor:
    """The recurrence's state after u (B, D, L): s = sum_j lambda^(L-1-j) u_j -> (B, D, N, 2),
    with the powers of `modal_powers` for length L."""
    re, im = powers[0].flip(-1), powers[1].flip(-1)  # lambda^(L-1-j) at position j
    uf = u.float()
    return torch.stack([torch.einsum("bdl,dnl->bdn", uf, re),
                        torch.einsum("bdl,dnl->bdn", uf, im)], dim=-1)


def modal_step(state: Tensor, u: Tensor, rate: Tensor, theta: Tensor, residues: Tensor) -> Tensor:
    """One decode step: s <- lambda s + u in place; returns Re <R, s>. state (B, D, N, 2), u (B, D)."""
    magnitude = torch.exp(-rate.float())
    a, b = magnitude * torch.cos(theta.float()), magnitude * torch.sin(theta.float())  # (D, N)
    s = state.float()
    re = a * s[..., 0] - b * s[..., 1] + u.float()[..., None]
    im = a * s[..., 1] + b * s[..., 0]
    state.copy_(torch.stack([re, im], dim=-1))
    r = residues.float()
    return (r[..., 0] * re - r[..., 1] * im).sum(-1)  # (B, D)
