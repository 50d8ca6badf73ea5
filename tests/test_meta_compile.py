"""Meta-learners' ``compile``: a compiled first-order inner loop gives the eager numbers; ``"auto"``
compiles only once the inner loops have run long enough; a bad value is a one-line error."""

from __future__ import annotations

import warnings

import pytest
import torch

import genfield.compiling as compiling
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.errors import InputError
from genfield.fields import build_field
from genfield.meta import build_meta_learner


def _batch():
    faces = list(builtin_faces("train", size=8))[:2]
    return ImageSplit(context_fraction=0.5)(faces, torch.Generator().manual_seed(0))


def _pair(method: str, **options):
    field = build_field("siren", head="grey", hidden=16, n_layers=2)
    eager = build_meta_learner(method, field, compile=False, **options)
    compiled = build_meta_learner(method, field, compile=True, **options)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def _skip_if_no_compiler(caught) -> None:
    fallback = [w for w in caught if "torch.compile failed" in str(w.message)]
    if fallback:
        pytest.skip(f"this machine cannot compile: {fallback[0].message}")


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("fomaml", {"inner_steps": 3, "inner_lr": 0.1}),
        ("ibaml", {"inner_steps": 3, "noise_seed": 0, "cg_iterations": 3}),
    ],
)
def test_compiled_inner_loop_gives_the_eager_meta_gradient(method, options):
    batch = _batch()
    eager, compiled = _pair(method, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled.meta_gradient(batch)
    _skip_if_no_compiler(caught)
    assert compiled.compiled_inner.is_compiled
    want = eager.meta_gradient(batch)
    assert not eager.compiled_inner.is_compiled
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert any(bool(v.abs().sum() > 0) for v in want.values())  # a real gradient, not zeros


def test_auto_compiles_once_the_inner_loops_have_taken_long_enough(monkeypatch):
    compiled_losses = []

    def recording(loss, what="fitting"):
        compiled_losses.append(what)
        return loss  # eager: this test checks the decision, the one above the compiled numbers

    monkeypatch.setattr(compiling, "compiled_loss", recording)
    batch = _batch()
    field = build_field("siren", head="grey", hidden=16, n_layers=2)
    learner = build_meta_learner("reptile", field, inner_steps=2, inner_lr=0.1)  # compile="auto"
    learner.meta_gradient(batch)
    assert compiled_losses == [] and not learner.compiled_inner.is_compiled  # milliseconds
    monkeypatch.setattr(compiling, "COMPILE_WORTH_SECONDS", 0.0)
    learner.meta_gradient(batch)  # this loop's time passes the threshold: later loops compile
    assert compiled_losses == [] and learner.compiled_inner.is_compiled
    learner.meta_gradient(batch)
    learner.meta_gradient(batch)
    assert compiled_losses == ["reptile inner loop"]  # compiled once, then reused


@pytest.mark.parametrize("bad", [1, "on", None])
def test_a_bad_compile_value_names_the_learner(bad):
    field = build_field("siren", head="grey", hidden=16, n_layers=2)
    with pytest.raises(InputError, match="ibaml inner loop compile must be true, false or 'auto'"):
        build_meta_learner("ibaml", field, compile=bad)
