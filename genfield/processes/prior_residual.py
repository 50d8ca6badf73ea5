"""A learned residual over the linear Gaussian prior: an amortised method that starts where the
strongest linear reference ends.

On images and CT the Gaussian of the training collection (:mod:`genfield.classical.gaussian`),
conditioned on the context through the kind's own linear forward map, beats every neural route that
starts from nothing. This method keeps that posterior and learns only what it misses, as the learned
post-processing of FBPConvNet (Jin et al. 2017) corrects FBP, but over a learned prior instead of a
filtered back-projection: per signal, a U-Net (:mod:`genfield.processes.unet`) reads on the pixel grid

* the prior's posterior mean ``m`` and posterior std ``s`` (every kind),
* the density-normalised adjoint of the context ``P^T y / P^T 1`` and its density ``P^T 1`` (images:
  the context values and where they are),

and returns a residual ``r`` on the mean; a second 1x1 head on the U-Net's last features, which
it reads without passing gradients back into them, gives a log-scale ``l`` on the variance. Both
output layers are zero-initialised, so before training the method *is* the linear prior. The
predicted slice or image is the grid field (bilinear between pixel centres,
:func:`~genfield.forward.grid.grid_field`)

    f = m + r,        v = (s^2 + sigma^2) exp(l) + min_std^2

(``sigma^2`` the prior's noise of a new pixel, images only), observed through any query map
(variances through :meth:`~genfield.forward.base.ForwardMap.propagate_variance`).

Training scores the target through the batch's forward map (CT: projections), as the neural
processes do: the squared error of the mean plus the Gaussian NLL of the variance with the mean and
the trunk's features held fixed (stop-gradients), so learning the variance cannot trade away
accuracy of the mean (the failure of a joint heteroscedastic NLL, Seitzer et al. 2022). The prior
is fitted once, on the training collection the method is built with: its posterior is measured to
be no better on those training signals than on held-out ones (``docs/decisions.md``), so the U-Net
sees the residuals it will meet at test time. Its mean, covariance and held-out signals are buffers of the
checkpoint: ``reconstruct`` rebuilds the method without the training data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from genfield.calibration import hold_std_scale, scaled
from genfield.classical.gaussian import (
    Dense,
    GaussianPrior,
    Selection,
    condition,
    pixel_selection,
    projection_matrices,
)
from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError, unknown_name
from genfield.fields.field import Field, FieldConfig
from genfield.fields.heads import head_channels
from genfield.forward import ForwardMap
from genfield.forward.grid import grid_field
from genfield.interface import Adapted, Prediction, Reconstructor
from genfield.processes.local import normalised, splat_with_density
from genfield.processes.subsampling import subsample_context, subsample_range
from genfield.processes.unet import UNet

#: The kinds with a linear forward map over a pixel grid, where a Gaussian prior conditions exactly.
KINDS = ("image", "ct")
#: What training scores (``PriorResidual(score=...)``).
SCORES = ("target", "ground_truth")
#: The buffers that hold the fitted prior (sized by the training collection or the checkpoint).
PRIOR_BUFFERS = ("prior_mean", "prior_cov", "prior_validation", "prior_shape", "prior_noise")


class PriorResidual(Reconstructor):
    """The linear Gaussian prior's posterior plus a learned residual (module docstring).

    Args:
        field_config: the signal's field; only its head (the signal's channels) is used, the
            prediction is a pixel grid.
        kind: ``image`` or ``ct``.
        collection: the training signals the prior is fitted on; ``None`` when the method is rebuilt
            from a checkpoint (its buffers then take the checkpoint's shapes).
        channels: the U-Net's channels per level, finest first.
        shrinkage, noise, validation_fraction, max_dim: the prior's
            (:class:`~genfield.classical.gaussian.GaussianPrior`).
        max_log_scale: bound on ``|l|``, the log-factor on the prior's variance.
        score: what training scores: ``"target"``, the batch's target through its forward map (CT:
            projections), or ``"ground_truth"``, the predicted grid against the batch's pixel
            ground truth (images, CT slices), where the collection has it.
        context_subsample: ``(lo, hi)``: in training, keep ``lo..hi`` random whole units of each
            context (CT projections; pixels), the dropped ones joining the target
            (:func:`~genfield.processes.subsampling.subsample_context`), so a model trained on 12 views
            has met the posteriors of 1 or 2; ``None``: the context as given.
        min_std: a floor on the predicted std, added in quadrature (as the neural processes'
            ``min_std``): the posterior variance at a context pixel is nearly 0, and a residual that
            moves the mean there would otherwise meet a vanishing variance in the NLL.
    """

    learns_from_collection = True
    kinds = KINDS

    def __init__(
        self,
        field_config: FieldConfig,
        kind: str,
        collection: Any = None,
        *,
        channels: Sequence[int] = (32, 64, 128),
        shrinkage: float | None = None,
        noise: float | None = None,
        validation_fraction: float = 0.1,
        max_dim: int = 8192,
        max_log_scale: float = 5.0,
        min_std: float = 0.01,
        context_subsample: Sequence[int] | None = None,
        score: str = "target",
    ) -> None:
        super().__init__()
        if score not in SCORES:
            raise unknown_name("prior_residual score", score, SCORES)
        self.score = score
        if kind not in KINDS:
            raise InputError(
                f"method prior_residual needs a kind with a linear forward map over pixels {list(KINDS)}, "
                f"not {kind!r}"
            )
        if (
            isinstance(channels, str | int)
            or not channels
            or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in channels)
        ):
            raise InputError(f"prior_residual channels must be a list of positive integers, got {channels!r}")
        if not max_log_scale > 0:
            raise InputError(f"prior_residual max_log_scale must be > 0, got {max_log_scale}")
        if not min_std >= 0:
            raise InputError(f"prior_residual min_std must be >= 0, got {min_std}")
        self.context_subsample = subsample_range(context_subsample, "prior_residual")
        self.kind, self.max_log_scale, self.min_var = kind, float(max_log_scale), float(min_std) ** 2
        self.signal_channels = head_channels(field_config.head, field_config.out_dim)
        c = self.signal_channels
        in_channels = 2 * c + (c + 1 if kind == "image" else 0)
        channels = tuple(int(k) for k in channels)
        self.unet = UNet(in_channels, c, channels)
        self.scale_head = nn.Conv2d(channels[0], c, 1)
        for conv in (self.unet.out, self.scale_head):  # before training: exactly the linear prior
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.prior_options = {
            "shrinkage": shrinkage,
            "noise": noise,
            "validation_fraction": validation_fraction,
            "max_dim": max_dim,
        }
        GaussianPrior(**self.prior_options)  # its options are checked now, not at the first fit
        for name in PRIOR_BUFFERS:
            self.register_buffer(
                name, torch.zeros(0, dtype=torch.long if name == "prior_shape" else torch.float64)
            )
        hold_std_scale(self)  # the factor on every predicted std, set on validation signals
        if collection is not None:
            self.fit_prior(collection)
        self._operators: dict[bytes, torch.Tensor] = {}  # CT projection matrices by geometry

    # -- the prior ------------------------------------------------------------------------------
    def fit_prior(self, collection: Any) -> None:
        """Fit the Gaussian prior on ``collection`` and keep it in the buffers."""
        prior = GaussianPrior(**self.prior_options).fit(collection)  # its tensors live in the buffers
        if prior.shape[-1] != self.signal_channels:
            raise InputError(
                f"prior_residual: the training images have {prior.shape[-1]} channels, the field's head "
                f"{self.signal_channels}"
            )
        fixed = torch.tensor([] if prior.noise is None else [float(prior.noise)], dtype=torch.float64)
        values = (prior.mean, prior.cov, prior.validation, torch.tensor(prior.shape), fixed)
        for name, value in zip(PRIOR_BUFFERS, values, strict=True):
            setattr(self, name, value.to(getattr(self, name).device))

    def adopt_shapes(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Size the prior's buffers as a checkpoint's ``weights`` hold them (before loading them)."""
        for name in PRIOR_BUFFERS:
            if name in weights:
                current = getattr(self, name)
                setattr(self, name, torch.zeros_like(weights[name], device=current.device))

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.prior_shape.numel() != 3:
            raise InputError(
                "method prior_residual has no fitted prior: build it with its training collection"
            )
        return tuple(int(v) for v in self.prior_shape.tolist())

    def operator(self, context: Observations, context_map: ForwardMap) -> Selection | Dense:
        """The context's linear map over the pixel grid (pixel selection, or CT projection matrices)."""
        height, width, channels = self.shape
        device = self.prior_cov.device
        if self.kind == "image":
            return pixel_selection(context.queries.detach().to(device), (height, width, channels))
        if len(self._operators) > 64:  # training contexts draw new angles at every step
            self._operators.clear()
        matrices = projection_matrices(context_map, context.queries, (height, width), self._operators)
        return Dense(matrices.matrix.to(device))

    @torch.no_grad()
    def posterior(self, context: Observations, context_map: ForwardMap) -> tuple[torch.Tensor, ...]:
        """The prior's posterior mean and variance and the noise of a new pixel (images; ``None`` for
        CT), each ``(S, C, H, W)`` in the context's dtype."""
        height, width, channels = self.shape
        values = rearrange(context.values.detach().to(self.prior_cov), "s n c -> s (n c)")
        fixed = float(self.prior_noise) if self.prior_noise.numel() else None
        mean, variance, noise = condition(
            self.operator(context, context_map),
            values,
            self.prior_mean,
            self.prior_cov,
            self.prior_validation,
            fixed,
        )
        like = context.values

        def grid(x: torch.Tensor) -> torch.Tensor:
            x = rearrange(x, "s (h w c) -> s c h w", h=height, w=width)
            return x.to(device=like.device, dtype=like.dtype)

        noise = grid(noise[:, None].expand_as(variance)) if self.kind == "image" else None
        return grid(mean), grid(variance), noise

    # -- the network ----------------------------------------------------------------------------
    def grids(self, context: Observations, context_map: ForwardMap) -> tuple[torch.Tensor, ...]:
        """The predicted mean, variance and noise part of the variance (images; ``None`` for CT),
        each ``(S, H, W, C)``."""
        if context.num_signals == 0 or context.num_observations == 0:
            raise InputError(f"context is empty: shape {tuple(context.queries.shape)}")
        context_map.validate_queries(context.queries, "context")
        mean, variance, noise = self.posterior(context, context_map)
        inputs = [mean, (variance + 1e-12).sqrt()]
        if self.kind == "image":
            splat = splat_with_density(context, context_map, tuple(mean.shape[-2:]))
            evidence = torch.cat([normalised(splat, 0.01), splat[..., -1:]], -1)
            inputs.append(rearrange(evidence, "s h w c -> s c h w"))
        features = self.unet.features(torch.cat(inputs, dim=1))
        log_scale = self.scale_head(features.detach())  # the variance does not steer the trunk
        scale = torch.exp(log_scale.clamp(-self.max_log_scale, self.max_log_scale))
        residual = self.unet.out(features)
        total = (variance if noise is None else variance + noise) * scale + self.min_var
        grids = (mean + residual, total, None if noise is None else noise * scale)
        return tuple(None if g is None else rearrange(g, "s c h w -> s h w c") for g in grids)

    def observe(
        self, grids: tuple[torch.Tensor, ...], queries: torch.Tensor, query_map: ForwardMap, variance: bool
    ) -> Prediction:
        """The grids' field observed at ``queries`` through ``query_map``."""
        mean_fn = grid_field(grids[0])
        mean = query_map(mean_fn, queries)
        if not variance:
            return Prediction(mean=mean)
        total = query_map.propagate_variance(mean_fn, grid_field(grids[1]), queries)
        noise = (
            None if grids[2] is None else query_map.propagate_variance(mean_fn, grid_field(grids[2]), queries)
        )
        return Prediction(mean=mean, variance=total, noise_variance=noise)

    # -- training -------------------------------------------------------------------------------
    def compute_gradients(self, batch: SignalBatch) -> dict[str, torch.Tensor]:
        """Squared error of the mean plus the variance's NLL at a fixed mean (``score`` says on what)."""
        if batch.kind != self.kind:
            raise InputError(f"batch kind {batch.kind!r} does not match the method's {self.kind!r}")
        batch.forward_map.validate_queries(batch.target.queries, "target")
        context, target = batch.context, batch.target
        if self.context_subsample is not None:
            unit = context.layout.unit_size if context.layout is not None else 1
            context, target = subsample_context(context, target, unit, *self.context_subsample)
        grids = self.grids(context, batch.forward_map)
        if self.score == "ground_truth":
            if batch.ground_truth is None or batch.ground_truth.shape != grids[0].shape:
                found = None if batch.ground_truth is None else tuple(batch.ground_truth.shape)
                raise InputError(
                    f"prior_residual score=ground_truth needs the batch's pixel ground truth "
                    f"{tuple(grids[0].shape)}, found {found}"
                )
            mean, variance, values = grids[0], grids[1], batch.ground_truth
        else:
            predicted = self.observe(grids, target.queries, batch.forward_map, True)
            mean, variance, values = predicted.mean, predicted.variance, target.values
        mse = (mean - values).square().mean()
        var = variance.clamp_min(1e-10)
        nll = 0.5 * ((mean.detach() - values).square() / var + var.log() + math.log(2 * math.pi)).mean()
        loss = mse + nll
        loss.backward()
        return {"loss": loss.detach(), "mse": mse.detach(), "nll": nll.detach()}

    # -- test time ------------------------------------------------------------------------------
    def settings(self, budget: Mapping[str, Any]) -> list[tuple[str, int | None]]:
        """One forward pass (the method has no test-time steps)."""
        return [("one pass", 0)]

    def reconstruct(
        self,
        context: Observations,
        context_map: ForwardMap,
        queries: torch.Tensor,
        query_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
        variance: bool = True,
    ) -> Prediction:
        """The posterior plus residual at ``queries``; ``steps`` and ``num_samples`` do not apply."""
        query_map.validate_queries(queries, "query")
        return self.condition_on(context, context_map).predict(queries, query_map, variance=variance)

    @torch.no_grad()
    def condition_on(
        self,
        context: Observations,
        context_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
    ) -> Adapted:
        return ConditionedGrids(self, self.grids(context, context_map))


class ConditionedGrids(Adapted):
    """A :class:`PriorResidual` conditioned on one context: its grids, observed at any queries."""

    def __init__(self, method: PriorResidual, grids: tuple[torch.Tensor, ...]) -> None:
        self.method, self.grids = method, grids

    @torch.no_grad()
    def predict(self, queries: torch.Tensor, query_map: ForwardMap, *, variance: bool = True) -> Prediction:
        query_map.validate_queries(queries, "query")
        # the calibrated factor (genfield.calibration) on what is predicted, never on what trains
        return scaled(self.method.observe(self.grids, queries, query_map, variance), self.method.std_scale)


def build_prior_residual(
    name: str,
    field: Field | FieldConfig,
    kind: str,
    *,
    collection: Any = None,
    channels: Sequence[int] = (32, 64, 128),
    shrinkage: float | None = None,
    noise: float | None = None,
    validation_fraction: float = 0.1,
    max_dim: int = 8192,
    max_log_scale: float = 5.0,
    min_std: float = 0.01,
    context_subsample: Sequence[int] | None = None,
    score: str = "target",
) -> PriorResidual:
    """The ``prior_residual`` method on ``kind`` (:class:`PriorResidual`, whose arguments these are).

    ``name`` is the method config's; ``collection`` the training signals (``build_method`` passes the
    data bundle's), ``None`` to rebuild from a checkpoint.
    """
    config = field.config if isinstance(field, Field) else field
    return PriorResidual(
        config,
        kind,
        collection,
        channels=channels,
        shrinkage=shrinkage,
        noise=noise,
        validation_fraction=validation_fraction,
        max_dim=max_dim,
        max_log_scale=max_log_scale,
        min_std=min_std,
        context_subsample=context_subsample,
        score=score,
    )
