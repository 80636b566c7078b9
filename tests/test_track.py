"""lambda_max along training (landscape.tracking) against the exact Hessian at each checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import designed_regression, sample_problem

from landscape.io.checkpoint import read_state_dict
from landscape.io.samples import sample
from landscape.tracking import track_curvature


def _states(name: str, count: int) -> list[dict[str, torch.Tensor]]:
    return [read_state_dict(p) for p in sample(name)["checkpoints"][:count]]


def _loss_fn(problem, buffers):
    def loss(t):
        out = torch.func.functional_call(problem.model, (problem.layout.unflatten(t), buffers), (problem.x,))
        return problem.loss_fn(out, problem.y)

    return loss


def test_lambda_max_trace_and_loss_at_each_checkpoint_match_the_exact_hessian():
    problem = sample_problem("mlp", samples=120)
    states = _states("mlp", 2)
    theta = problem.theta.clone()
    done: list[int] = []
    res = track_curvature(problem, states, trace=True, tol=1e-9, on_checkpoint=done.append)
    assert done == [1, 2]
    for i, state in enumerate(states):
        flat = problem.layout.flatten({n: state[n].double() for n in problem.layout.names})
        loss = _loss_fn(problem, problem.buffers)
        eig = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat))
        assert res.lambda_max[i] == pytest.approx(float(eig.max()), rel=1e-7)
        assert res.converged[i] and res.lambda_max_residual[i] <= 1e-8 * res.lambda_max[i]
        assert res.loss[i] == pytest.approx(float(loss(flat)), rel=1e-12)
        assert abs(res.trace[i] - float(eig.sum())) <= 3 * res.trace_std_error[i] + 1e-9 * abs(float(eig.sum()))
    assert abs(res.lambda_max[0] - res.lambda_max[1]) > 1e-3 * res.lambda_max[1]  # the checkpoints differ
    assert torch.equal(problem.theta, theta) and torch.equal(problem.layout.flatten(problem.params()), theta)


def test_each_checkpoint_is_evaluated_with_its_own_batchnorm_statistics():
    problem = sample_problem("cnn", samples=60)
    states = _states("cnn", 2)
    buffers = {k: v.clone() for k, v in problem.buffers.items()}
    res = track_curvature(problem, states, tol=1e-3)
    assert res.trace is None
    for i, state in enumerate(states):
        flat = problem.layout.flatten({n: state[n].double() for n in problem.layout.names})
        own = {k: state[k].double() if state[k].is_floating_point() else state[k] for k in problem.buffers}
        assert res.loss[i] == pytest.approx(float(_loss_fn(problem, own)(flat)), rel=1e-12)
        assert res.loss[i] != pytest.approx(
            float(_loss_fn(problem, buffers)(flat)), rel=1e-6
        )  # not the final checkpoint's
        assert res.lambda_max[i] > 0
    assert all(torch.equal(problem.buffers[k], v) for k, v in buffers.items())


def _exact_subspace(h: torch.Tensor, g: torch.Tensor, k: int) -> tuple[float, torch.Tensor]:
    vecs = torch.linalg.eigh(h).eigenvectors[:, -k:]  # the top k, orthonormal
    return float((vecs.T @ g).pow(2).sum() / (g @ g)), vecs


def test_gradient_share_in_the_top_subspace_of_a_quadratic_is_exact():
    # a quadratic's Hessian is the same everywhere: consecutive top-k subspaces overlap exactly (1),
    # and the gradient H (w - w*) has a closed-form share in it
    eigenvalues = np.concatenate([[40.0, 25.0, 16.0, 9.0], np.linspace(0.1, 2.0, 60)])
    problem = designed_regression(eigenvalues)
    gen = torch.Generator().manual_seed(4)
    states = [{"weight": torch.randn(1, 64, generator=gen, dtype=torch.float64)} for _ in range(3)]
    res = track_curvature(problem, states, tol=1e-10, subspace=4)
    loss = lambda w: problem.loss_fn(problem.x @ w.view(-1, 1), problem.y)  # noqa: E731
    for i, state in enumerate(states):
        w = state["weight"].view(-1)
        share, _ = _exact_subspace(torch.func.hessian(loss)(w), torch.func.grad(loss)(w), 4)
        assert res.grad_in_top[i] == pytest.approx(share, abs=1e-8)
    assert np.isnan(res.subspace_overlap[0])
    np.testing.assert_allclose(res.subspace_overlap[1:], 1.0, atol=1e-8)
    assert res.subspace_converged.all()


def test_gradient_share_and_overlap_match_exact_hessians_of_the_mlp(cli, tmp_path):
    problem = sample_problem("mlp", samples=200)
    states = _states("mlp", 3)
    res = track_curvature(problem, states, tol=1e-8, subspace=10)
    previous = None
    for i, state in enumerate(states):
        flat = problem.layout.flatten({n: state[n].double() for n in problem.layout.names})
        loss = _loss_fn(problem, problem.buffers)
        share, vecs = _exact_subspace(torch.func.hessian(loss)(flat), torch.func.grad(loss)(flat), 10)
        assert res.grad_in_top[i] == pytest.approx(share, abs=1e-5)
        if previous is not None:
            assert res.subspace_overlap[i] == pytest.approx(float((previous.T @ vecs).pow(2).sum()) / 10, abs=1e-5)
        previous = vecs
    r = cli("track", "--sample", "mlp", "--subspace", "10", "--dtype", "float64", "-o", tmp_path / "t.h5",
            "--figure", tmp_path / "t.png")  # fmt: skip
    assert r.code == 0, r.err
    assert "grad in top-10" in r.out and (tmp_path / "t.png").stat().st_size > 0
    r = cli("metrics", tmp_path / "t.h5", "--fail-if", "track.subspace_overlap_mean < 0.1")
    assert r.code == 0, r.err
    r = cli("track", "--sample", "mlp", "--subspace", "-1", "-o", tmp_path / "u.h5")
    assert r.code == 2 and "--subspace" in r.err
