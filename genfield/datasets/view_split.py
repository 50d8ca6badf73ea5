"""The multi-view context/target split: context views and target rays of each scene."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange

from genfield.datasets.batch import Observations, SignalBatch, ViewLayout
from genfield.datasets.scenes import ViewSignal
from genfield.errors import InputError
from genfield.forward.volume import VolumeRenderer, ray_queries


@dataclass
class ViewSplit:
    """Split each scene's views into context views and target views, and their pixels into rays.

    Per signal, ``n_context_views + n_target_views`` distinct views are drawn at random. Context
    observations are the rays of the context views (all pixels, view-major: view ``v``'s ``H * W``
    rays contiguous and row-major; or ``context_rays`` random rays of them, in that order); target
    observations are ``rays_per_signal`` random rays of the target views (all when ``None``). Values
    are the pixel colours. Observations that keep every ray of their views carry a
    :class:`~genfield.datasets.batch.ViewLayout`; random subsets of rays carry none. The forward map
    is a :class:`~genfield.forward.volume.VolumeRenderer` built from the renderer options below.

    Attributes:
        n_context_views, n_target_views: views per signal.
        rays_per_signal: target rays per signal (training); ``None`` = every pixel of the targets.
        context_rays: context rays per signal; ``None`` = every pixel of the context views.
        clip_to_cube: clip each ray's ``[near, far]`` to the world cube (see ``ray_queries``).
        n_samples, n_importance, stratified, white_background: the renderer's options.
    """

    n_context_views: int = 1
    n_target_views: int = 1
    rays_per_signal: int | None = 1024
    context_rays: int | None = None
    clip_to_cube: bool = True
    n_samples: int = 64
    n_importance: int = 0
    stratified: bool = True
    white_background: bool = True

    def __post_init__(self) -> None:
        if self.n_context_views < 1 or self.n_target_views < 1:
            raise InputError("ViewSplit needs n_context_views >= 1 and n_target_views >= 1")

    @property
    def renderer(self) -> VolumeRenderer:
        """The forward map of the batches: a volume renderer with this split's options."""
        return VolumeRenderer(
            n_samples=self.n_samples,
            n_importance=self.n_importance,
            stratified=self.stratified,
            white_background=self.white_background,
        )

    def __call__(self, signals: Sequence[ViewSignal], generator: torch.Generator) -> SignalBatch:
        if not signals:
            raise InputError("ViewSplit got no signals")
        size = signals[0].image_size
        for signal in signals:
            if signal.image_size != size:
                raise InputError(
                    f"scene {signal.name!r} has images of size {signal.image_size}; "
                    f"the batch has {size} (resize or downscale to a common size)"
                )
            if signal.num_views < self.n_context_views + self.n_target_views:
                raise InputError(
                    f"scene {signal.name!r} has {signal.num_views} views; the split needs "
                    f"{self.n_context_views} context + {self.n_target_views} target views"
                )
        parts = [self._one(signal, generator) for signal in signals]
        stack = {key: torch.stack([p[key] for p in parts]) for key in parts[0]}
        extras = {
            "context_views": stack["context_views"],
            "target_views": stack["target_views"],
            "context_images": stack["context_images"],
            "context_c2w": stack["context_c2w"],
            "target_c2w": stack["target_c2w"],
            "focal": stack["focal"],
            "principal_point": stack["principal_point"],
            "context_index": stack["context_index"],
            "target_index": stack["target_index"],
        }
        metadata = [{"name": s.name, "num_views": s.num_views, "near": s.near, "far": s.far} for s in signals]
        return SignalBatch(
            kind="views",
            forward_map=self.renderer,
            context=Observations(
                stack["context_queries"],
                stack["context_values"],
                whole_views(self.n_context_views, self.context_rays, size),
            ),
            target=Observations(
                stack["target_queries"],
                stack["target_values"],
                whole_views(self.n_target_views, self.rays_per_signal, size),
            ),
            metadata=metadata,
            ground_truth=stack["target_images"],
            extras=extras,
        )

    def _rays(self, signal: ViewSignal, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View-major queries ``(V * H * W, 8)`` and colours ``(V * H * W, 3)`` of ``views``."""
        origins, directions = signal.rays(views)
        queries = ray_queries(origins, directions, signal.near, signal.far, self.clip_to_cube)
        flat = "v n q -> (v n) q"
        return rearrange(queries, flat), rearrange(signal.images[views], "v h w c -> (v h w) c")

    @staticmethod
    def _subset(total: int, count: int | None, generator: torch.Generator) -> torch.Tensor:
        if count is None or count >= total:
            return torch.arange(total)
        return torch.randperm(total, generator=generator)[:count].sort().values

    def _one(self, signal: ViewSignal, generator: torch.Generator) -> dict[str, torch.Tensor]:
        order = torch.randperm(signal.num_views, generator=generator)
        context_views = order[: self.n_context_views]
        target_views = order[self.n_context_views : self.n_context_views + self.n_target_views]
        context_queries, context_values = self._rays(signal, context_views)
        target_queries, target_values = self._rays(signal, target_views)
        context_index = self._subset(len(context_queries), self.context_rays, generator)
        target_index = self._subset(len(target_queries), self.rays_per_signal, generator)
        return {
            "context_queries": context_queries[context_index],
            "context_values": context_values[context_index],
            "target_queries": target_queries[target_index],
            "target_values": target_values[target_index],
            "context_index": context_index,
            "target_index": target_index,
            "context_views": context_views,
            "target_views": target_views,
            "context_images": signal.images[context_views],
            "target_images": signal.images[target_views],
            "context_c2w": signal.c2w[context_views],
            "target_c2w": signal.c2w[target_views],
            "focal": torch.tensor(signal.focal, dtype=torch.float32),
            "principal_point": torch.tensor([signal.cx, signal.cy], dtype=torch.float32),
        }


def whole_views(n_views: int, rays: int | None, size: tuple[int, int]) -> ViewLayout | None:
    """The layout of ``n_views`` views of ``size`` when ``rays`` (``None``: all) keeps every ray."""
    height, width = size
    return ViewLayout(n_views, height, width) if rays is None or rays >= n_views * height * width else None
