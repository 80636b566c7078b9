"""The data set's loss is the mean over the loss's terms (tokens, pixels; -100 left out), whatever the batch size.

Batches were weighted by their rows: with padded language-model targets a batch of 2 moved GPT-2's loss
by 0.01 against the whole set's token mean, and the sweep's probe tunes the batch size, so the values
of one run depended on its timing. Truth here: F.cross_entropy over every target at once, and the
exact Hessian of that (torch.func.hessian + eigh).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import landscape as ls
from landscape.losses import cross_entropy, loss_terms, next_token
from landscape.measures import loss_at

V = 11


def _padded_tokens() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(V, 6), nn.Tanh(), nn.Linear(6, V)).double()
    ids = torch.randint(0, V, (7, 9))
    labels = ids.clone()
    for i in range(7):
        labels[i, 2 + i :] = -100  # rows of 2 to 8 real tokens, then padding
    return model, ids, labels


def _token_mean(
    model: nn.Module, params: dict[str, torch.Tensor], ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    logits = functional_call(model, params, (ids,))
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


def test_terms_are_the_counted_targets_of_the_built_in_class_losses():
    _, ids, labels = _padded_tokens()
    assert loss_terms(next_token, labels) == 1 + 2 + 3 + 4 + 5 + 6 + 7  # row i: 2 + i tokens, 1 + i predicted
    assert loss_terms(cross_entropy, labels) == int((labels != -100).sum())
    assert loss_terms(cross_entropy, torch.tensor([1, -100, 2])) == 2
    assert loss_terms(cross_entropy, torch.rand(5, 3)) == 5  # probability targets: one term a row
    assert loss_terms(lambda out, y: out.mean(), labels) == 7  # a user's loss: its batch's rows


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_padded_next_token_loss_and_curvature_do_not_depend_on_the_batch_size(batch_size):
    model, ids, labels = _padded_tokens()
    problem = ls.Problem(
        model, {"input_ids": ids, "labels": labels}, loss="next-token", batch_size=batch_size, dtype="float64",
        columns=ls.Columns(input_keys=("input_ids",), target_key="labels"),
    )  # fmt: skip
    assert problem.terms == int((labels[:, 1:] != -100).sum())
    axes = ls.random_axes(problem, 1, seed=2)
    sweep = ls.sweep(problem, axes, x=(-1, 1, 3), strategy="loop")
    theta = dict(model.named_parameters())
    for c, got, accuracy in zip(sweep.x, sweep.loss, sweep.accuracy):
        at = problem.layout.unflatten(problem.theta + float(c) * axes.directions[0].to(problem.theta))
        assert got == pytest.approx(float(_token_mean(model, at, ids, labels)), rel=1e-12)
        predicted, counted = functional_call(model, at, (ids,))[:, :-1].argmax(-1), labels[:, 1:]
        assert accuracy == float((predicted == counted)[counted != -100].double().mean())  # next-token accuracy

    flat = problem.layout.flatten({k: v.detach() for k, v in theta.items()})
    exact = torch.func.hessian(lambda u: _token_mean(model, problem.layout.unflatten(u), ids, labels))(flat)
    top = torch.linalg.eigvalsh(exact).flip(0)[:2].numpy()
    curvature = ls.hessian(problem, top_k=2, tol=1e-10)
    np.testing.assert_allclose(curvature.eigenvalues, top, rtol=1e-8)


def test_dense_targets_with_ignored_pixels_are_averaged_over_the_counted_pixels():
    """A segmentation-shaped output [N, C, H, W] against [N, H, W] with ignored pixels, batch by batch."""
    torch.manual_seed(1)
    model = nn.Conv2d(3, 4, 3, padding=1).double()
    x, y = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randint(0, 4, (5, 6, 6))
    y[0] = -100  # a sample with nothing to count: its batch of one is left out
    y[1, :4] = -100
    problem = ls.Problem(model, (x, y), batch_size=1, dtype="float64")
    assert problem.terms == int((y != -100).sum())
    axes = ls.random_axes(problem, 1, seed=0)
    sweep = ls.sweep(problem, axes, x=(-1, 1, 3), strategy="loop")
    for c, got, accuracy in zip(sweep.x, sweep.loss, sweep.accuracy):
        at = problem.layout.unflatten(problem.theta + float(c) * axes.directions[0].to(problem.theta))
        logits = functional_call(model, at, (x,))
        assert got == pytest.approx(float(F.cross_entropy(logits, y, ignore_index=-100)), rel=1e-12)
        assert accuracy == pytest.approx(float((logits.argmax(1) == y)[y != -100].double().mean()), abs=1e-15)


def test_ignored_class_targets_count_for_neither_loss_nor_accuracy_with_any_strategy():
    """One class per sample, some -100: the mlp strategy's gather failed on them; accuracy counted them wrong."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    y[:5] = -100
    problem = ls.Problem(model, (x, y), dtype="float64")
    axes = ls.random_axes(problem, 1, seed=0)
    kept = y != -100
    for strategy in ("loop", "vmap", "firstlayer", "auto"):
        sweep = ls.sweep(problem, axes, x=(-1, 1, 3), strategy=strategy)
        for c, loss, accuracy in zip(sweep.x, sweep.loss, sweep.accuracy):
            at = problem.layout.unflatten(problem.theta + float(c) * axes.directions[0].to(problem.theta))
            logits = functional_call(model, at, (x,))
            assert loss == pytest.approx(float(F.cross_entropy(logits, y, ignore_index=-100)), rel=1e-12)
            assert accuracy == pytest.approx(float((logits.argmax(1) == y)[kept].double().mean()), abs=1e-15)


def test_batchnorm_without_running_statistics_keeps_the_batch_size_and_says_why():
    """Such a norm normalizes by each batch's statistics in eval mode: the loss depends on the batch, so
    the probe may not tune the batch size (values of one run would differ with its timing)."""

    def convnet(running: bool) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4, track_running_stats=running),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(144, 3),
        )

    data = (torch.randn(48, 3, 8, 8), torch.randint(0, 3, (48,)))
    said: list[str] = []
    problem = ls.Problem(convnet(False), data, say=said.append)
    assert not problem.auto_batch and problem.batch_size == 48
    assert said == [
        "BatchNorm 1 keeps no running statistics and normalizes each batch by its own, so the loss depends on "
        "the batch size: it stays 48 (not tuned)"
    ]
    whole = ls.Problem(convnet(False), data, batch_size=48)
    halves = ls.Problem(whole.model, data, batch_size=24)
    assert loss_at(whole, whole.theta) != pytest.approx(loss_at(halves, halves.theta), rel=1e-4)  # why it matters
    assert ls.Problem(convnet(True), data).auto_batch


def test_a_sample_with_every_target_ignored_adds_nothing_to_the_empirical_fisher():
    """Its own loss was 0 / 0 = NaN, and so was the per-sample Fisher. Now its gradient is 0: the Fisher
    (1/N) sum_i g_i g_i^T of the set with it is (N - 1) / N times that of the set without it."""
    model, ids, labels = _padded_tokens()
    labels[3, 1:] = -100  # nothing to predict in sample 3

    def fisher_top(rows: torch.Tensor) -> np.ndarray:
        data = {"input_ids": ids[rows], "labels": labels[rows]}
        cols = ls.Columns(input_keys=("input_ids",), target_key="labels")
        problem = ls.Problem(model, data, loss="next-token", dtype="float64", columns=cols)
        return ls.hessian(problem, top_k=2, tol=1e-10, curvature="fisher").eigenvalues

    every, others = fisher_top(torch.arange(7)), fisher_top(torch.tensor([0, 1, 2, 4, 5, 6]))
    assert np.isfinite(every).all()
    np.testing.assert_allclose(every, others * 6 / 7, rtol=1e-8)
