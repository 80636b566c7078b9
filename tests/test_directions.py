"""Filter/layer/model normalization and bias/BN zeroing, as REFERENCES.md states them."""

from __future__ import annotations

import pytest
import torch
from conftest import sample_problem

from landscape.directions import cosine, line_to, random_directions


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_filter_norm_matches_each_filter(name):
    p = sample_problem(name, samples=4)
    d = random_directions(1, p.theta, p.layout, seed=0, norm="filter", ignore="biasbn")[0]
    dp, wp = p.layout.unflatten(d), p.layout.unflatten(p.theta)
    for n, shape in zip(p.layout.names, p.layout.shapes):
        if len(shape) <= 1:
            assert torch.count_nonzero(dp[n]) == 0, n  # biases and norm-layer weights zeroed
        else:
            dn = dp[n].reshape(shape[0], -1).norm(dim=1)
            wn = wp[n].reshape(shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, rtol=1e-8, atol=1e-8)


def test_ignore_none_keeps_1d_tensors_normalized_once():
    p = sample_problem("cnn", samples=4)
    d = random_directions(1, p.theta, p.layout, seed=0, norm="filter", ignore="none")[0]
    dp, wp = p.layout.unflatten(d), p.layout.unflatten(p.theta)
    for n, shape in zip(p.layout.names, p.layout.shapes):
        if len(shape) == 1:
            assert dp[n].norm().item() == pytest.approx(wp[n].norm().item(), rel=1e-8)


def test_layer_and_model_norm():
    p = sample_problem("mlp", samples=4)
    d = random_directions(1, p.theta, p.layout, seed=0, norm="layer", ignore="none")[0]
    for n in p.layout.names:
        assert p.layout.unflatten(d)[n].norm().item() == pytest.approx(
            p.layout.unflatten(p.theta)[n].norm().item(), rel=1e-8
        )
    d = random_directions(1, p.theta, p.layout, seed=0, norm="model", ignore="none")[0]
    assert d.norm().item() == pytest.approx(p.theta.norm().item(), rel=1e-8)
    raw = random_directions(1, p.theta, p.layout, seed=0, norm="none", ignore="none")[0]
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(raw, torch.randn(p.layout.size, generator=gen, dtype=torch.float64))


def test_seeded_reproducible_and_distinct():
    p = sample_problem("mlp", samples=4)
    a = random_directions(2, p.theta, p.layout, seed=7)
    b = random_directions(2, p.theta, p.layout, seed=7)
    c = random_directions(2, p.theta, p.layout, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(cosine(a[0], a[1])) < 0.2  # Gaussian directions in high dimension: nearly orthogonal


def test_line_to_is_difference():
    a, b = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(a + line_to(a, b), b)
