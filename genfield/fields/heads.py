"""Output heads: the activation that turns a network's raw output into a signal's value.

============  ========  ==============================================================
head          channels  meaning
============  ========  ==============================================================
rgb           3         colour in [0, 1] (sigmoid)
grey          1         intensity in [0, 1] (sigmoid)
attenuation   1         CT attenuation >= 0 (softplus)
sdf           1         signed distance, unbounded (identity)
occupancy     1         unbounded (identity): a logit for a Bernoulli likelihood (neural processes),
                        a 0/1 regression for Gaussian ones (meta-learners); either way the
                        *predicted* occupancy is a probability and the surface its 0.5 level
radiance      4         (density >= 0 by softplus, RGB in [0, 1] by sigmoid), for volume rendering
identity      any       the raw output (neural processes that predict a mean and a scale)
============  ========  ==============================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genfield.errors import unknown_name

HEAD_CHANNELS: dict[str, int | None] = {
    "rgb": 3,
    "grey": 1,
    "attenuation": 1,
    "sdf": 1,
    "occupancy": 1,
    "radiance": 4,
    "identity": None,
}


def head_channels(head: str, out_dim: int | None = None) -> int:
    """Number of output channels of ``head`` (``out_dim`` is required for ``identity``)."""
    if head not in HEAD_CHANNELS:
        raise unknown_name("output head", head, list(HEAD_CHANNELS))
    channels = HEAD_CHANNELS[head]
    if channels is None:
        if out_dim is None:
            raise ValueError("the identity head needs out_dim")
        return out_dim
    return channels


def apply_head(head: str, raw: torch.Tensor) -> torch.Tensor:
    """Apply the activation of ``head`` to the raw network output ``(..., channels)``."""
    if head in ("rgb", "grey"):
        return torch.sigmoid(raw)
    if head == "attenuation":
        return F.softplus(raw)
    if head == "radiance":
        return torch.cat([F.softplus(raw[..., :1]), torch.sigmoid(raw[..., 1:])], dim=-1)
    if head in ("sdf", "occupancy", "identity"):
        return raw
    raise unknown_name("output head", head, list(HEAD_CHANNELS))
