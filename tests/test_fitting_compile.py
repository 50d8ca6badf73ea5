"""``fit_from_scratch(compile=...)``: the compiled loss fits exactly like the eager one; ``"auto"``
compiles only a fit long enough to pay for it; a machine that cannot compile still fits."""

from __future__ import annotations

import warnings

import pytest
import torch

import genfield.compiling as compiling
import genfield.fitting as fitting
from genfield.datasets.batch import Observations
from genfield.errors import InputError
from genfield.fields import build_field, grid_coords
from genfield.forward import PointMap


def _problem():
    torch.manual_seed(0)
    field = build_field("siren", head="grey", hidden=16, n_layers=2)
    obs = Observations(grid_coords((6, 6))[None].expand(2, -1, -1), torch.rand(2, 36, 1))
    return field, obs


def test_compiled_fit_equals_the_eager_fit():
    field, obs = _problem()
    eager, eager_history = fitting.fit_from_scratch(field, obs, PointMap(), steps=4, lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, compiled_history = fitting.fit_from_scratch(
            field, obs, PointMap(), steps=4, lr=1e-2, compile=True
        )
    fallback = [w for w in caught if "torch.compile failed" in str(w.message)]
    if fallback:  # the eager fallback has its own test below; here only a real compilation counts
        pytest.skip(f"this machine cannot compile: {fallback[0].message}")
    torch.testing.assert_close(compiled_history, eager_history, rtol=1e-4, atol=1e-6)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-6)


def test_auto_compiles_only_a_fit_worth_it(monkeypatch):
    calls = []

    def recording(loss):
        calls.append(loss)
        return loss  # the eager loss: this test checks the decision, the one above the compiled numbers

    monkeypatch.setattr(fitting, "compiled_loss", recording)
    field, obs = _problem()
    fitting.fit_from_scratch(field, obs, PointMap(), steps=3, compile="auto")  # milliseconds: not worth it
    assert calls == []
    monkeypatch.setattr(compiling, "COMPILE_WORTH_SECONDS", 0.0)
    fitting.fit_from_scratch(field, obs, PointMap(), steps=3, compile="auto")
    assert calls == [fitting.fitting_loss]  # once, after the timed first step
    with pytest.raises(InputError, match="compile must be"):
        fitting.fit_from_scratch(field, obs, PointMap(), steps=3, compile="always")
    with pytest.raises(InputError, match="got 1"):
        fitting.RandomInitFit(field, compile=1)


def test_a_failed_compilation_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(function, **options):
        def run(*args):
            raise RuntimeError("no C++ compiler found\nlong traceback")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    field, obs = _problem()
    eager, _ = fitting.fit_from_scratch(field, obs, PointMap(), steps=3)
    with pytest.warns(
        UserWarning, match="torch.compile failed, fitting without it: no C\\+\\+ compiler found$"
    ):
        fallback, _ = fitting.fit_from_scratch(field, obs, PointMap(), steps=3, compile=True)
    for name in eager:
        torch.testing.assert_close(fallback[name], eager[name])


class _BackwardFails(torch.autograd.Function):
    """Identity whose backward raises, as a backward graph the compiler cannot build does."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward: inductor lowering failed")


def test_a_backward_that_cannot_compile_falls_back_before_the_fit_uses_it(monkeypatch):
    def compiles_forward_only(function, **options):
        return lambda *args: _BackwardFails.apply(function(*args))

    monkeypatch.setattr(torch, "compile", compiles_forward_only)
    field, obs = _problem()
    eager, eager_history = fitting.fit_from_scratch(field, obs, PointMap(), steps=3)
    with pytest.warns(UserWarning, match="torch.compile failed, fitting without it: backward: inductor"):
        fallback, history = fitting.fit_from_scratch(field, obs, PointMap(), steps=3, compile=True)
    torch.testing.assert_close(history, eager_history)
    for name in eager:
        torch.testing.assert_close(fallback[name], eager[name])
