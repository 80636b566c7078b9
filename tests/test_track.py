"""lambda_max along training (landscape.tracking) against the exact Hessian at each checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import sample_problem

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
