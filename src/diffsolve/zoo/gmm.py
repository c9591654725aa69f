r"""Gaussian mixtures: data distributions whose ideal denoiser is known exactly.

For data x0 ~ sum_k w_k N(mu_k, C_k) and the forward process x = alpha x0 + sigma n,
n ~ N(0, I), everything a sampler needs is in closed form:

* the law of x_t is again a mixture,
      p_t(x) = sum_k w_k N(x; alpha mu_k, S_k),   S_k = alpha^2 C_k + sigma^2 I;
* the posterior of x0 given x_t = x is a mixture with responsibilities
      r_k(x) = w_k N(x; alpha mu_k, S_k) / p_t(x)
  and component posterior means (Gaussian conditioning, e.g. Bishop 2006, eq. 2.116)
      m_k(x) = mu_k + alpha C_k S_k^{-1} (x - alpha mu_k);
* so the ideal denoiser (posterior mean) is D(x) = E[x0 | x_t = x] = sum_k r_k(x) m_k(x);
* the score of x_t is grad log p_t(x) = -sum_k r_k(x) S_k^{-1} (x - alpha mu_k), and
  Tweedie's formula (Efron 2011; Kadkhodaie & Simoncelli 2021) links the two:
  D(x) = (x + sigma^2 grad log p_t(x)) / alpha.

Each covariance is diagonalised once, C_k = U_k diag(e_k) U_k^T; then
S_k = U_k diag(alpha^2 e_k + sigma^2) U_k^T is diagonal in the same basis for every
(alpha, sigma), so one evaluation costs two small matrix products per component and no
factorisation. Responsibilities use log-sum-exp. All arithmetic is float64.

:meth:`GaussianMixture.log_prob` deliberately takes a different path (a Cholesky factorisation of
the full covariance) so that tests can check :meth:`GaussianMixture.denoise` against Tweedie's
formula with an autograd score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import DiffsolveError
from ..core.models import Denoiser
from ..core.schedules import EvalPoint, NoiseSchedule
from .reference import pf_ode_reference

ArrayLike = Tensor | np.ndarray | Sequence[Any] | float

_LOG_2PI = math.log(2.0 * math.pi)


def _as_f64(v: ArrayLike) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach().to(device="cpu", dtype=torch.float64).clone()
    return torch.as_tensor(np.asarray(v, dtype=np.float64))


class GaussianMixture:
    r"""A Gaussian mixture sum_k w_k N(mu_k, C_k) in R^d with exact diffusion quantities.

    The instance is immutable in practice: parameters are stored as private float64 CPU
    tensors and the properties return copies.

    Args:
        weights: mixture weights, shape (K,), non-negative with positive sum (normalised here).
        means: component means, shape (K, d).
        covs: component covariances, shape (K, d, d), symmetric positive definite.

    Raises:
        DiffsolveError: on shape mismatches, negative weights or non-SPD covariances.
    """

    def __init__(self, weights: ArrayLike, means: ArrayLike, covs: ArrayLike) -> None:
        w = _as_f64(weights).reshape(-1)
        mu = _as_f64(means)
        c = _as_f64(covs)
        if mu.dim() == 1:
            mu = mu.reshape(1, -1)
        if c.dim() == 2:
            c = c.unsqueeze(0)
        k, d = mu.shape
        if w.numel() != k or c.shape != (k, d, d):
            raise DiffsolveError(
                f"inconsistent mixture shapes: weights {tuple(w.shape)}, means {tuple(mu.shape)},"
                f" covs {tuple(c.shape)}; expected (K,), (K, d), (K, d, d)")
        if k < 1 or d < 1:
            raise DiffsolveError("a mixture needs at least one component and dimension >= 1")
        if not (torch.isfinite(w).all() and torch.isfinite(mu).all() and torch.isfinite(c).all()):
            raise DiffsolveError("mixture parameters must be finite")
        if (w < 0).any() or float(w.sum()) <= 0:
            raise DiffsolveError(f"weights must be non-negative with a positive sum, got {w}")
        if not torch.allclose(c, c.transpose(-1, -2), rtol=1e-10, atol=1e-12):
            raise DiffsolveError("covariances must be symmetric")
        c = 0.5 * (c + c.transpose(-1, -2))
        chol, info = torch.linalg.cholesky_ex(c)
        if (info != 0).any():
            bad = torch.nonzero(info).reshape(-1).tolist()
            raise DiffsolveError(f"covariances of components {bad} are not positive definite")
        evals, evecs = torch.linalg.eigh(c)
        if (evals <= 0).any():
            raise DiffsolveError("covariances must be positive definite (an eigenvalue is <= 0)")
        self._w = w / w.sum()
        self._logw = torch.log(self._w)
        self._mu = mu
        self._c = c
        self._chol = chol
        self._evals = evals  # (K, d)
        self._evecs = evecs  # (K, d, d); columns are eigenvectors
        self._dev_cache: dict[torch.device, tuple[Tensor, ...]] = {}

    # constructors ---------------------------------------------------------------------------
    @classmethod
    def isotropic(cls, weights: ArrayLike, means: ArrayLike,
                  variances: ArrayLike) -> GaussianMixture:
        """Mixture with covariances v_k I; ``variances`` is a scalar or shape (K,)."""
        mu = _as_f64(means)
        if mu.dim() == 1:
            mu = mu.reshape(1, -1)
        k, d = mu.shape
        v = _as_f64(variances).reshape(-1).expand(k)
        covs = v[:, None, None] * torch.eye(d, dtype=torch.float64)
        return cls(weights, mu, covs)

    @classmethod
    def gaussian(cls, mean: ArrayLike, cov: ArrayLike) -> GaussianMixture:
        """A single Gaussian N(mean, cov) (K = 1); ``cov`` is a scalar variance, a diagonal of
        shape (d,) or a full (d, d) matrix."""
        m = _as_f64(mean).reshape(-1)
        d = m.numel()
        c = _as_f64(cov)
        if c.dim() == 0 or (c.numel() == 1 and d != 1):
            c = c.reshape(()) * torch.eye(d, dtype=torch.float64)
        elif c.dim() == 1:
            c = torch.diag(c)
        return cls(torch.ones(1, dtype=torch.float64), m.reshape(1, d), c.reshape(1, d, d))

    @classmethod
    def default_2d(cls) -> GaussianMixture:
        """A 2-D mixture of 8 components with data scale ~1 (used by the CLI demo).

        Six tight isotropic components on a ring of radius 1 (unequal weights), a rotated
        elongated component at the origin and a flat one below the ring.
        """
        angles = torch.arange(6, dtype=torch.float64) * (math.pi / 3)
        ring = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        means = torch.cat([ring, torch.tensor([[0.0, 0.0], [0.0, -1.45]], dtype=torch.float64)])
        eye = torch.eye(2, dtype=torch.float64)
        covs = [0.008 * eye for _ in range(6)]
        th = math.pi / 6
        rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]],
                           dtype=torch.float64)
        covs.append(rot @ torch.diag(torch.tensor([0.10, 0.01], dtype=torch.float64)) @ rot.T)
        covs.append(torch.diag(torch.tensor([0.06, 0.004], dtype=torch.float64)))
        weights = [0.16, 0.10, 0.14, 0.08, 0.12, 0.10, 0.20, 0.10]
        return cls(weights, means, torch.stack(covs))

    @classmethod
    def random(cls, d: int, k: int, seed: int = 0) -> GaussianMixture:
        """A reproducible random mixture in R^d with k components (for tests).

        Means ~ N(0, I), covariances A A^T / d + 0.05 I scaled by a per-component factor in
        [0.05, 0.3], weights uniform in [0.5, 1.5] then normalised.
        """
        rng = np.random.default_rng(seed)
        means = rng.standard_normal((k, d))
        a = rng.standard_normal((k, d, d))
        covs = a @ np.swapaxes(a, -1, -2) / d + 0.05 * np.eye(d)
        covs *= rng.uniform(0.05, 0.3, size=(k, 1, 1))
        weights = rng.uniform(0.5, 1.5, size=k)
        return cls(weights, means, covs)

    # parameters and moments -----------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Data dimension d."""
        return int(self._mu.shape[1])

    @property
    def n_components(self) -> int:
        """Number of components K."""
        return int(self._mu.shape[0])

    @property
    def weights(self) -> Tensor:
        return self._w.clone()

    @property
    def means(self) -> Tensor:
        return self._mu.clone()

    @property
    def covs(self) -> Tensor:
        return self._c.clone()

    @property
    def mean(self) -> Tensor:
        """Mixture mean sum_k w_k mu_k, shape (d,)."""
        return self._w @ self._mu

    @property
    def cov(self) -> Tensor:
        """Mixture covariance sum_k w_k (C_k + mu_k mu_k^T) - mean mean^T, shape (d, d)."""
        m = self.mean
        second = torch.einsum("k,kij->ij", self._w, self._c + self._mu[:, :, None]
                              * self._mu[:, None, :])
        return second - torch.outer(m, m)

    def marginal(self, alpha: float, sigma: float) -> GaussianMixture:
        """Law of x_t = alpha x0 + sigma n: weights w_k, means alpha mu_k,
        covariances alpha^2 C_k + sigma^2 I."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self._w, alpha * self._mu,
                               alpha * alpha * self._c + sigma * sigma * eye)

    def __repr__(self) -> str:
        return f"GaussianMixture(d={self.dim}, K={self.n_components})"

    # internals -------------------------------------------------------------------------------
    def _on(self, device: torch.device) -> tuple[Tensor, ...]:
        """(log w, mu, e, U) on ``device``; cached per device (sigma-independent)."""
        got = self._dev_cache.get(device)
        if got is None:
            got = tuple(t.to(device) for t in (self._logw, self._mu, self._evals, self._evecs))
            self._dev_cache[device] = got
        return got

    def _flat(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or math.prod(x.shape[1:]) != self.dim:
            raise DiffsolveError(
                f"expected x of shape (B, d) or (B, *shape) with prod(shape) = d = {self.dim}, "
                f"got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    @staticmethod
    def _coef(v: float | Tensor, batch: int, device: torch.device) -> Tensor | float:
        if isinstance(v, Tensor):
            t = v.to(device=device, dtype=torch.float64).reshape(-1)
            if t.numel() == 1:
                return t.reshape(1, 1, 1)
            if t.numel() != batch:
                raise DiffsolveError(
                    f"alpha/sigma tensors must have 1 or B = {batch} entries, got {t.numel()}")
            return t.reshape(batch, 1, 1)
        v = float(v)
        if not math.isfinite(v) or v < 0:
            raise DiffsolveError(f"alpha and sigma must be finite and >= 0, got {v}")
        return v

    def _posterior(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor,
                   want: str) -> Tensor:
        """Core evaluation in the eigenbasis; x is (B, d) float64. Returns D or the score."""
        batch = x.shape[0]
        logw, mu, e, u = self._on(x.device)
        a = self._coef(alpha, batch, x.device)
        s = self._coef(sigma, batch, x.device)
        if isinstance(a, float) and isinstance(s, float) and a == 0.0 and s == 0.0:
            raise DiffsolveError("alpha and sigma cannot both be zero")
        var = a * a * e + s * s  # (K, d) or (B, K, d): eigenvalues of S_k
        xc = x[:, None, :] - a * mu  # (B, K, d): x - alpha mu_k
        y = torch.einsum("bki,kij->bkj", xc, u)  # U_k^T (x - alpha mu_k)
        if var.dim() == 2:
            var = var.expand(batch, *var.shape)
        loglik = -0.5 * ((y * y / var).sum(-1) + torch.log(var).sum(-1))  # (B, K) + const
        resp = torch.softmax(logw + loglik, dim=-1)  # (B, K)
        if want == "score":
            g = -y / var
            comp = torch.einsum("kij,bkj->bki", u, g)
            return torch.einsum("bk,bki->bi", resp, comp)
        g = (a * e) * y / var  # diag(alpha e / (alpha^2 e + sigma^2)) U^T (x - alpha mu)
        comp = mu + torch.einsum("kij,bkj->bki", u, g)  # m_k(x)
        return torch.einsum("bk,bki->bi", resp, comp)

    # exact diffusion quantities ---------------------------------------------------------------
    def denoise(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        r"""Exact posterior mean D(x) = E[x0 | alpha x0 + sigma n = x].

        D(x) = sum_k r_k(x) [mu_k + alpha C_k (alpha^2 C_k + sigma^2 I)^{-1} (x - alpha mu_k)],
        r_k(x) proportional to w_k N(x; alpha mu_k, alpha^2 C_k + sigma^2 I) (softmax of
        log-densities). sigma = 0 gives x/alpha; alpha = 0 gives the mixture mean.

        Args:
            x: shape (B, d) or (B, *shape) with prod(shape) = d; any float dtype and device.
            alpha, sigma: Python floats, or float tensors with 1 or B entries (per sample).

        Returns:
            D(x) with x's shape, dtype and device (computed in float64).
        """
        out = self._posterior(self._flat(x), alpha, sigma, "data")
        return out.reshape(x.shape).to(x.dtype)

    def score(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        r"""Exact score of x_t: grad_x log p_t(x) = -sum_k r_k(x) S_k^{-1} (x - alpha mu_k),
        S_k = alpha^2 C_k + sigma^2 I. Same shape/dtype conventions as :meth:`denoise`."""
        out = self._posterior(self._flat(x), alpha, sigma, "score")
        return out.reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""log sum_k w_k N(x; mu_k, C_k) for x of shape (B, d) or (B, *shape); returns (B,).

        Computed through the Cholesky factors C_k = L_k L_k^T (a different path from
        :meth:`denoise`), differentiable by autograd; for the law of x_t use
        ``marginal(alpha, sigma).log_prob(x)``.
        """
        xf = self._flat(x)
        logw, mu, chol = (t.to(xf.device) for t in (self._logw, self._mu, self._chol))
        diff = (xf[:, None, :] - mu).transpose(0, 1).unsqueeze(-1)  # (K, B, d, 1)
        z = torch.linalg.solve_triangular(chol[:, None], diff, upper=False).squeeze(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
        comp = -0.5 * (z * z).sum(-1) - 0.5 * (logdet[:, None] + self.dim * _LOG_2PI)  # (K, B)
        return torch.logsumexp(logw[:, None] + comp, dim=0).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples, float64, shape (n, d), on the generator's device: a component index
        k ~ Categorical(w), then mu_k + L_k z with z ~ N(0, I) and C_k = L_k L_k^T."""
        device = generator.device if generator is not None else torch.device("cpu")
        w, mu, chol = (t.to(device) for t in (self._w, self._mu, self._chol))
        idx = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, device=device, generator=generator)
        return mu[idx] + torch.einsum("nij,nj->ni", chol[idx], z)

    # use as a diffsolve model -------------------------------------------------------------
    def denoiser(self, schedule: NoiseSchedule) -> Denoiser:
        """A :class:`~diffsolve.models.Denoiser` whose D is exactly :meth:`denoise`.

        It predicts x0 and receives lambda as its time input. The network reads alpha and sigma
        from the :class:`~diffsolve.schedules.EvalPoint` that the Denoiser hands to its
        ``time_input`` callable just before every call, so it never reads a device tensor
        back (no host synchronisation) and loses no precision to the time vector's dtype.
        The point is consumed by the next network call; a call without a fresh point (e.g.
        ``denoiser.net(x, lam_vec)`` on its own) reads lambda from lam_vec[0] instead.
        """
        net = _MixtureNet(self, schedule)
        return Denoiser(net, schedule, prediction="x0", time_input=net.set_point)

    def kdiffusion_denoiser(self) -> Callable[..., Tensor]:
        """A k-diffusion style denoiser ``f(x, sigma_vec, **kwargs) -> x0`` in EDM coordinates
        (alpha = 1, sigma = sigma_vec, one entry per sample or one for all)."""

        def f(x: Tensor, sigma: Tensor | float, **kwargs: Any) -> Tensor:
            return self.denoise(x, 1.0, sigma)

        return f

    def denoise_edm_numpy(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """:meth:`denoise` with alpha = 1 on float64 numpy arrays (B, d) (for
        :func:`~diffsolve.zoo.reference.pf_ode_reference`)."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        return self._posterior(xt, 1.0, float(sigma), "data").numpy()

    # reference PF-ODE solutions ------------------------------------------------------------
    def ode_reference(self, x_edm: Tensor, sigma_from: float,
                      sigma_to: float | Sequence[float], rtol: float = 1e-12,
                      atol: float = 1e-12) -> Tensor:
        """PF-ODE solution in EDM coordinates from noise level ``sigma_from`` to ``sigma_to``
        (see :func:`~diffsolve.zoo.reference.pf_ode_reference`; lambda = -log sigma)."""
        lam_to: float | list[float]
        if isinstance(sigma_to, (int, float)):
            lam_to = -math.log(sigma_to)
        else:
            lam_to = [-math.log(float(s)) for s in sigma_to]
        return pf_ode_reference(self.denoise_edm_numpy, x_edm, -math.log(sigma_from), lam_to,
                                rtol=rtol, atol=atol)

    def ode_reference_schedule(self, schedule: NoiseSchedule, x_start: Tensor, lam_from: float,
                               lam_to: float | Sequence[float], rtol: float = 1e-12,
                               atol: float = 1e-12) -> Tensor:
        """PF-ODE solution in ``schedule``'s own scaling: x_start is x at ``lam_from``; returns
        alpha(lam_to) * x~(lam_to) with x~ the EDM-coordinate solution started from
        x_start / alpha(lam_from). float64; shape as :func:`pf_ode_reference`."""
        a0 = float(schedule.alpha_at_lam(float(lam_from)))
        x_edm = x_start.to(torch.float64) / a0
        res = pf_ode_reference(self.denoise_edm_numpy, x_edm, lam_from, lam_to, rtol=rtol,
                               atol=atol)
        if isinstance(lam_to, (int, float)):
            return res * float(schedule.alpha_at_lam(float(lam_to)))
        alphas = torch.tensor([float(schedule.alpha_at_lam(float(v))) for v in lam_to],
                              dtype=torch.float64, device=res.device)
        return res * alphas.reshape(-1, *([1] * (res.dim() - 1)))


class _MixtureNet:
    """net(x, lam_vec) -> E[x0 | x_t = x]: the x0-predicting network behind
    :meth:`GaussianMixture.denoiser`."""

    def __init__(self, gmm: GaussianMixture, schedule: NoiseSchedule) -> None:
        self.gmm = gmm
        self.schedule = schedule
        self.point: EvalPoint | None = None

    def set_point(self, point: EvalPoint) -> float:
        """Time-input callable of the Denoiser: remembers the point, returns lambda."""
        self.point = point
        return point.lam

    def __call__(self, x: Tensor, lam_vec: Tensor, **kwargs: Any) -> Tensor:
        point, self.point = self.point, None  # consume: a direct call must not reuse it
        if point is None:
            point = self.schedule.point(float(lam_vec.reshape(-1)[0]))
        return self.gmm.denoise(x, point.alpha, point.sigma)


def default_2d() -> GaussianMixture:
    """The 2-D demo mixture, :meth:`GaussianMixture.default_2d`."""
    return GaussianMixture.default_2d()


__all__ = ["GaussianMixture", "default_2d"]
