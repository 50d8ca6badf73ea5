"""The linear learned prior: a Gaussian over images fitted to the training collection, conditioned on
the context through the kind's own linear forward map.

Prior ``x ~ N(mu, Sigma)`` over the flattened image ``x`` (``d = H W C`` values): ``mu`` is the
training mean and ``Sigma`` the sample covariance shrunk towards its diagonal with the closed-form
coefficient of Ledoit & Wolf (2004) in the form of Schäfer & Strimmer (2005, target "D"):

    lambda* = sum_{i != j} Var(s_ij) / sum_{i != j} s_ij^2,     Sigma = S with s_ij -> (1 - lambda*) s_ij,

which keeps the variances and damps the noisy correlations of a covariance estimated from fewer
signals than pixels. Observations ``y = A x + e``, ``e ~ N(0, sigma^2 I)``, where ``A`` is the batch's
forward map: pixel selection for images, genfield's projector for CT (built once per geometry by
projecting the basis images through ``batch.forward_map``, so the prior sees exactly the physics the
learned methods see). The posterior (Rasmussen & Williams 2006, eq. 2.19, with a linear map) is

    mean = mu + Sigma A^T (A Sigma A^T + sigma^2 I)^{-1} (y - A mu),
    var  = diag(Sigma) - diag(Sigma A^T (A Sigma A^T + sigma^2 I)^{-1} A Sigma),

solved by a Cholesky factorisation batched over signals. ``sigma^2`` is chosen per signal by
maximum marginal likelihood ``N(A x_v; A mu, A Sigma A^T + sigma^2 I)`` of held-out *training*
signals ``x_v`` (the last ``validation_fraction`` of the training collection, left out of ``mu`` and
``Sigma``) observed through that signal's ``A``, over a log grid relative to the mean prior variance
of the observations; the test signal's own values are not used. For images a new pixel is an
observation, so the predictive variance adds ``sigma^2`` (``Prediction.noise_variance``); for CT the
predictions are pixels of the slice, not projections, and carry the posterior variance alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, repeat

from genfield.classical.base import image_shape, require_kind, training_images
from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError
from genfield.forward.ct import image_field
from genfield.interface import Prediction

#: ``log10`` of ``sigma^2`` relative to the mean prior variance of the observations, searched by
#: maximum marginal likelihood.
NOISE_GRID = tuple(x / 2 for x in range(-16, 1))


def shrunk_covariance(
    samples: torch.Tensor, coefficient: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean ``(d,)``, covariance ``(d, d)`` shrunk towards its diagonal, and the coefficient.

    ``samples`` is ``(n, d)`` with ``n >= 2``; ``coefficient=None`` estimates it in closed form
    (module docstring). ``Var(s_ij)`` is the unbiased estimate of Schäfer & Strimmer (2005, eq. 8),
    ``n / (n - 1)^3 sum_k (w_kij - mean_k w_kij)^2`` with ``w_kij = (x_ki - mean_i)(x_kj - mean_j)``,
    summed without forming the ``(n, d, d)`` products.
    """
    n = samples.shape[0]
    if n < 2:
        raise InputError(f"a covariance needs at least 2 training signals, got {n}")
    x = samples.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / (n - 1)
    off = ~torch.eye(cov.shape[0], dtype=torch.bool)
    if coefficient is not None:
        return mean, torch.where(off, cov * (1 - coefficient), cov), float(coefficient)
    w_mean = cov * ((n - 1) / n)
    spread = (centred.square().T @ centred.square()) - n * w_mean.square()
    var_s = spread * (n / (n - 1) ** 3)
    denominator = cov[off].square().sum()
    coefficient = 0.0 if denominator == 0 else float((var_s[off].sum() / denominator).clamp(0, 1))
    shrunk = torch.where(off, cov * (1 - coefficient), cov)
    return mean, shrunk, coefficient


@dataclass
class Selection:
    """A linear map that samples values: row ``n`` of signal ``s`` reads ``x[index[s, n]]`` (one 1 per
    row of ``A``). It is what a point map at pixel centres is, held as indices so that ``Sigma A^T``
    and ``A Sigma A^T`` are gathers instead of products with a dense ``(S, N, d)`` matrix."""

    index: torch.Tensor  # (S, N) flat value indices into x (d,)
    dim: int

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: ``x (d,)`` -> ``(S, N)``; ``x (V, d)`` (shared by the signals) -> ``(S, V, N)``."""
        return x[self.index] if x.ndim == 1 else rearrange(x[:, self.index], "v s n -> s v n")

    def cross(self, cov: torch.Tensor) -> torch.Tensor:
        """``Sigma A^T`` ``(S, d, N)``."""
        return rearrange(cov[:, self.index], "d s n -> s d n")

    def gram(self, cov: torch.Tensor) -> torch.Tensor:
        """``A Sigma A^T`` ``(S, N, N)``."""
        return cov[self.index[:, :, None], self.index[:, None, :]]

    def dense(self) -> torch.Tensor:
        """``A`` as a dense 0/1 matrix ``(S, N, d)`` (float64)."""
        out = torch.zeros(*self.index.shape, self.dim, dtype=torch.float64, device=self.index.device)
        return out.scatter_(2, self.index[..., None], 1.0)


@dataclass
class Dense:
    """A linear map held as its matrix ``A (S, N, d)`` (CT: genfield's projector)."""

    matrix: torch.Tensor

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 1:
            return self.matrix @ x
        return torch.einsum("snd,vd->svn", self.matrix, x)

    def cross(self, cov: torch.Tensor) -> torch.Tensor:
        return cov @ self.matrix.transpose(-1, -2)

    def gram(self, cov: torch.Tensor) -> torch.Tensor:
        return self.matrix @ self.cross(cov)

    def dense(self) -> torch.Tensor:
        return self.matrix


def as_operator(operator: Selection | Dense | torch.Tensor) -> Selection | Dense:
    """A :class:`Selection` or :class:`Dense` as it is; a tensor ``(S, N, d)`` as :class:`Dense`."""
    return operator if isinstance(operator, Selection | Dense) else Dense(operator)


def pixel_selection(queries: torch.Tensor, shape: tuple[int, int, int]) -> Selection:
    """The :class:`Selection` of point queries ``(S, N, 2)`` at the pixel centres of ``H x W x C``
    images (:mod:`genfield.fields.coords`), every channel of each pixel, in ``(pixel, channel)``
    order; a query off every centre raises :class:`InputError` (it is not one pixel's value)."""
    height, width, channels = shape
    sides = torch.tensor([height, width], dtype=torch.float64, device=queries.device)
    position = ((queries.detach().double() + 1) * sides - 1) / 2  # pixel units; centres are integers
    pixel = position.round()
    off = (position - pixel).abs() > 1e-3
    if bool((off | (pixel < 0) | (pixel >= sides)).any()):
        raise InputError(
            f"context queries are not at the pixel centres of a {height}x{width} image: a linear prior "
            "over its pixels observes pixel values"
        )
    flat = (pixel[..., 0] * width + pixel[..., 1]).long()
    index = repeat(flat * channels, "s n -> s (n c)", c=channels) + torch.arange(
        channels, device=flat.device
    ).repeat(flat.shape[1])
    return Selection(index, height * width * channels)


def image_operator(batch: SignalBatch) -> tuple[Selection, torch.Tensor]:
    """Pixel selection ``A`` of an image batch's context and the context ``y (S, Nc C)``."""
    n_signals, height, width, channels = batch.ground_truth.shape
    operator = pixel_selection(batch.context.queries.cpu(), (height, width, channels))
    values = rearrange(batch.context.values.detach().cpu().double(), "s n c -> s (n c)")
    return operator, values


def linear_operator(forward_map: Any, queries: torch.Tensor, size: tuple[int, int], chunk: int = 128):
    """The matrix ``(N, H W)`` of a linear forward map of one-channel ``H x W`` pixel images.

    Column ``j`` is the forward map of the bilinear interpolant of basis image ``e_j``
    (:func:`~genfield.forward.ct.image_field`), at the ``(N, q)`` queries, in float64.
    """
    height, width = size
    queries = queries.detach().cpu().double()
    columns = []
    for start in range(0, height * width, chunk):
        stop = min(start + chunk, height * width)
        basis = torch.zeros(stop - start, height * width, dtype=torch.float64)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        images = rearrange(basis, "b (h w) -> b h w 1", h=height)
        out = forward_map(image_field(images), queries.expand(stop - start, *queries.shape))
        columns.append(out[..., 0])
    return rearrange(torch.cat(columns), "d n -> n d")


def projection_matrices(
    forward_map: Any,
    queries: torch.Tensor,
    size: tuple[int, int],
    cache: dict[bytes, torch.Tensor] | None = None,
) -> Dense:
    """The matrices of ``forward_map`` at each signal's queries ``(S, N, q)`` over ``size`` pixel
    images, one :func:`linear_operator` per distinct geometry (``cache``, keyed by the queries'
    bytes, carries them across calls)."""
    cache = {} if cache is None else cache
    matrices = []
    for q in queries.detach().cpu():
        key = q.numpy().tobytes()
        if key not in cache:
            cache[key] = linear_operator(forward_map, q, size)
        matrices.append(cache[key])
    return Dense(torch.stack(matrices))


def ct_operator(batch: SignalBatch) -> tuple[Dense, torch.Tensor]:
    """Projection matrices ``A (S, N, d)`` (one per distinct geometry) and the context ``y (S, N)``."""
    *size, channels = image_shape(batch)
    if channels != 1:
        raise InputError(f"CT slices must have one channel, got {channels}")
    operator = projection_matrices(batch.forward_map, batch.context.queries, tuple(size))
    return operator, batch.context.values.detach().cpu().double()[..., 0]


def noise_by_marginal_likelihood(
    operator: Selection | Dense | torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    validation: torch.Tensor,
    grid: tuple[float, ...] = NOISE_GRID,
) -> torch.Tensor:
    """Per signal, the grid's ``sigma^2`` maximising ``sum_v log N(A x_v; A mu, A Sigma A^T + sigma^2 I)``.

    ``operator`` ``A`` (:func:`as_operator`, ``S`` signals, ``N`` observations), ``validation (V, d)``.
    One eigendecomposition of ``A Sigma A^T`` per signal serves every grid value:
    ``log det = sum log(l + sigma^2)``, the quadratic form is ``sum (U^T r)^2 / (l + sigma^2)``.
    """
    operator = as_operator(operator)
    prior = operator.gram(cov)  # (S, N, N)
    eigenvalues, vectors = torch.linalg.eigh(prior)
    residual = operator.observe(validation - mean)  # (S, V, N)
    projected = torch.einsum("snm,svn->svm", vectors, residual).square()  # (S, V, N)
    scale = prior.diagonal(dim1=-2, dim2=-1).mean(-1)  # (S,)
    noise = scale[:, None] * 10.0 ** torch.tensor(grid, dtype=scale.dtype)  # (S, G)
    spectrum = eigenvalues.clamp_min(0)[:, None, :] + noise[..., None]  # (S, G, N)
    logdet = spectrum.log().sum(-1)
    quadratic = torch.einsum("svn,sgn->sg", projected, 1.0 / spectrum)
    n_val, n_obs = validation.shape[0], prior.shape[1]
    loglik = -0.5 * (quadratic + n_val * logdet + n_val * n_obs * math.log(2 * math.pi))
    return noise.gather(1, loglik.argmax(1, keepdim=True))[:, 0]


def gaussian_posterior(
    operator: Selection | Dense | torch.Tensor,
    values: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean ``(S, d)`` and marginal variance ``(S, d)`` of ``x`` given ``y = A x + e``.

    ``operator`` ``A`` (:func:`as_operator`), ``values (S, N)``, ``noise (S,)`` the variance of ``e``.
    Cholesky of ``K = A Sigma A^T + sigma^2 I``, batched over signals.
    """
    operator = as_operator(operator)
    cross = operator.cross(cov)  # Sigma A^T, (S, d, N)
    eye = torch.eye(values.shape[1], dtype=cov.dtype, device=cov.device)
    gram = operator.gram(cov) + noise[:, None, None] * eye
    factor = torch.linalg.cholesky(gram)
    residual = values - operator.observe(mean)
    weights = torch.cholesky_solve(residual[..., None], factor)[..., 0]  # K^{-1} (y - A mu)
    posterior_mean = mean + (cross @ weights[..., None])[..., 0]
    whitened = torch.linalg.solve_triangular(factor, cross.transpose(-1, -2), upper=False)  # L^{-1} A Sigma
    variance = cov.diagonal() - whitened.square().sum(-2)
    return posterior_mean, variance.clamp_min(0)


def condition(
    operator: Selection | Dense | torch.Tensor,
    values: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    validation: torch.Tensor,
    noise: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior mean and variance ``(S, d)`` of :func:`gaussian_posterior` and the noise
    variance ``(S,)``: ``noise`` if given, else chosen by :func:`noise_by_marginal_likelihood`."""
    if noise is None:
        sigma2 = noise_by_marginal_likelihood(operator, mean, cov, validation)
    else:
        sigma2 = torch.full((values.shape[0],), float(noise), dtype=cov.dtype, device=cov.device)
    return (*gaussian_posterior(operator, values, mean, cov, sigma2), sigma2)


class GaussianPrior:
    """A Gaussian prior with the training collection's mean and shrunk covariance (module docstring).

    Args:
        shrinkage: the coefficient towards the diagonal in [0, 1]; ``None``: Ledoit–Wolf's closed form.
        noise: a fixed ``sigma^2``; ``None``: maximum marginal likelihood on held-out training signals.
        validation_fraction: the share of the training collection held out to choose ``sigma^2``.
        max_dim: the largest ``H W C`` accepted (the covariance is dense: ``max_dim^2`` float64).
    """

    name = "gaussian-prior"
    learns_from_collection = True

    def __init__(
        self,
        shrinkage: float | None = None,
        noise: float | None = None,
        validation_fraction: float = 0.1,
        max_dim: int = 8192,
    ) -> None:
        if shrinkage is not None and not 0 <= shrinkage <= 1:
            raise InputError(f"gaussian-prior shrinkage must be in [0, 1] or null, got {shrinkage}")
        if noise is not None and not noise > 0:
            raise InputError(f"gaussian-prior noise must be a positive variance or null, got {noise}")
        if not 0 < validation_fraction < 1:
            raise InputError(
                f"gaussian-prior validation_fraction must be in (0, 1), got {validation_fraction}"
            )
        self.shrinkage, self.noise, self.validation_fraction = shrinkage, noise, validation_fraction
        self.max_dim = max_dim
        self.mean: torch.Tensor | None = None

    def fit(self, train: Any) -> GaussianPrior:
        images = training_images(train, self.name)
        self.shape = tuple(images.shape[1:])
        if math.prod(self.shape) > self.max_dim:
            raise InputError(
                f"gaussian-prior: images {self.shape} have {math.prod(self.shape)} values, more than "
                f"max_dim={self.max_dim} for a dense covariance (use a smaller data size)"
            )
        flat = rearrange(images.double(), "n h w c -> n (h w c)")
        n_val = 0 if self.noise is not None else max(1, round(self.validation_fraction * len(flat)))
        if len(flat) - n_val < 2:
            raise InputError(
                f"gaussian-prior needs at least {2 + n_val} training signals "
                f"(2 for a covariance, {n_val} to choose the noise), got {len(flat)}"
            )
        self.validation = flat[len(flat) - n_val :]
        self.mean, self.cov, self.coefficient = shrunk_covariance(flat[: len(flat) - n_val], self.shrinkage)
        return self

    def observation_operator(self, batch: SignalBatch) -> tuple[Selection | Dense, torch.Tensor]:
        """The linear forward map ``A`` of the batch's context and its values ``(S, N)``."""
        require_kind(self.name, batch, ("image", "ct"))
        return image_operator(batch) if batch.kind == "image" else ct_operator(batch)

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        if batch.kind not in ("image", "ct"):
            raise InputError(
                f"gaussian-prior needs a kind with a linear forward map (image, ct), not {batch.kind!r}"
            )
        if self.mean is None:
            raise InputError("baseline 'gaussian-prior' must be fitted on a training collection first")
        if image_shape(batch) != self.shape:
            raise InputError(
                f"gaussian-prior was fitted on images {self.shape}, the batch has {image_shape(batch)}"
            )
        operator, values = self.observation_operator(batch)
        mean, variance, noise = condition(operator, values, self.mean, self.cov, self.validation, self.noise)
        height, width, channels = self.shape
        like = batch.context.values

        def pixels(x: torch.Tensor) -> torch.Tensor:
            return rearrange(x, "s (m c) -> s m c", c=channels).to(device=like.device, dtype=like.dtype)

        if batch.kind == "ct":
            return Prediction(mean=pixels(mean), variance=pixels(variance))
        noise_pixels = noise[:, None].expand_as(variance)
        return Prediction(
            mean=pixels(mean), variance=pixels(variance + noise_pixels), noise_variance=pixels(noise_pixels)
        )
