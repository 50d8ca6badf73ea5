"""Gradient-based meta-initialisation of neural fields: MAML, FOMAML, Reptile, iMAML and iBaML.

Build a learner by name for a field and use it from a notebook::

    from genfield.fields import build_field
    from genfield.meta import build_meta_learner

    field = build_field("siren", head="grey", hidden=32)
    learner = build_meta_learner("ibaml", field, inner_steps=10, mc_samples=2)
    learner.meta_parameters()            # {"prior_mean/...": Parameter, "prior_logvar/...": ...}
    learner.outer_loss(batch)            # the meta-objective of a SignalBatch
    learner.meta_gradient(batch)         # {name: gradient}
    state = learner.adapt(batch.context, batch.forward_map, steps=10)
    pred = learner.reconstruct(context, forward_map, queries, forward_map, num_samples=32)
    pred.mean, pred.variance             # (S, M, c) each; iBaML: linearized-Laplace predictive

Training is the lead's generic trainer: ``learner.compute_gradients(batch)`` fills ``.grad`` of
``learner.parameters()`` (an Adam step follows); skipped meta-steps write nothing.

Modules: :mod:`.inner` (batched inner loop, Meta-SGD), :mod:`.cg` (batched conjugate gradient),
:mod:`.likelihood` (Gaussian NLL, MSE), :mod:`.bayes` (diagonal Gaussians, KL and its derivatives),
:mod:`.explicit` (MAML, FOMAML, Reptile), :mod:`.imaml`, :mod:`.ibaml`, :mod:`.laplace` (iBaML's
predictive with posterior correlations), :mod:`.learner` (base class).
"""

from __future__ import annotations

from typing import Any

from genfield.errors import InputError, unknown_name
from genfield.fields.field import Field
from genfield.kinds import options_for_kind
from genfield.meta.explicit import MAML, Reptile
from genfield.meta.ibaml import IBaML
from genfield.meta.imaml import IMAML
from genfield.meta.learner import AdaptedState, MetaLearner, MetaStepSkipped
from genfield.targets import accepted_options

ESTIMATORS: dict[str, tuple[type[MetaLearner], dict[str, Any]]] = {
    "maml": (MAML, {"first_order": False}),
    "fomaml": (MAML, {"first_order": True}),
    "reptile": (Reptile, {}),
    "imaml": (IMAML, {}),
    "ibaml": (IBaML, {}),
}


def build_meta_learner(
    name: str, field: Field, *, kind: str | None = None, **options: Any
) -> MetaLearner:
    """A meta-learner by name (``maml``, ``fomaml``, ``reptile``, ``imaml``, ``ibaml``).

    Common options: ``inner_steps``, ``inner_lr``, ``inner_optimizer`` (``sgd``/``adam``),
    ``adapt_keys`` (e.g. ``"latent"`` for Functa-style modulated fields), ``seed``. MAML:
    ``meta_sgd`` (with ``inner_lr_per``, ``inner_lr_max``). MAML, FOMAML, Reptile, iMAML:
    ``curvature_cap``, ``curvature_iterations``. iMAML: ``lam``, ``cg_iterations``, ``cg_damping``,
    ``cg_tol``. iBaML: ``prior_std``,
    ``inner_lr_logvar``, ``mc_samples``, ``obs_noise``, ``learn_obs_noise``, the ``cg_*`` options,
    ``noise_seed``, ``predictive_noise``, ``predictive`` (``laplace``/``mean_field``),
    ``noise_gradient`` (``direct``/``implicit``).

    ``by_kind={kind: {...}}`` holds overrides for one data kind only, applied over the other options
    when ``kind`` (the data kind the learner is built for) matches (:mod:`genfield.kinds`): one
    method config then serves every kind, e.g. iBaML's prior and noise on CT.
    """
    if name not in ESTIMATORS:
        raise unknown_name("meta-learner", name, list(ESTIMATORS))
    options = options_for_kind(options, kind, "meta-learner")
    cls, fixed = ESTIMATORS[name]
    unknown = set(options) - (accepted_options(cls) - set(fixed))
    if unknown:
        raise InputError(f"unknown option(s) {sorted(unknown)} for meta-learner {name!r}")
    return cls(field, **fixed, **options)


__all__ = [
    "ESTIMATORS",
    "IBaML",
    "IMAML",
    "MAML",
    "AdaptedState",
    "MetaLearner",
    "MetaStepSkipped",
    "Reptile",
    "build_meta_learner",
]
