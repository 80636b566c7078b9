"""The CUDA path (runs only where a GPU is present): the batched sweep strategies and the curvature products
on the device equal the CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import sample_problem

from landscape.directions import random_directions
from landscape.strategies import build_strategy, grid_coords

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer", "linreg"])
@pytest.mark.parametrize("strategy", ["vmap", "loop", "mlp"])
def test_cuda_matches_cpu(name, strategy):
    if strategy == "mlp" and name in ("cnn", "transformer"):
        pytest.skip("not an MLP")
    cpu = sample_problem(name, samples=256)
    gpu = sample_problem(name, samples=256, device="cuda")
    dirs = random_directions(2, cpu.theta, cpu.layout, seed=0)
    coords = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-0.5, 0.5, 2)])
    ref = build_strategy("loop", cpu, dirs).evaluate(coords)
    strat = build_strategy(strategy, gpu, dirs, points_per_call=4)
    got = strat.evaluate(coords)
    strat.close()
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-6, atol=1e-9)
    assert gpu.x.device.type == "cuda" and next(gpu.model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher"])
def test_cuda_curvature_products_and_lanczos_match_cpu(name, curvature):
    from landscape.curvature import CurvatureOperator, lanczos

    cpu = sample_problem(name, samples=128)
    gpu = sample_problem(name, samples=128, device="cuda")
    V = torch.randn(3, cpu.layout.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ops = [CurvatureOperator(p, curvature=curvature) for p in (cpu, gpu)]
    ref, got = (op.matmat(V) for op in ops)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-8, atol=1e-10)
    eig = [lanczos(op.matmat, op.size, k=3, tol=1e-8, device=op.device, start=op.probe) for op in ops]
    torch.testing.assert_close(
        torch.as_tensor(eig[1].eigenvalues), torch.as_tensor(eig[0].eigenvalues), rtol=1e-7, atol=1e-10
    )


def test_cuda_lanczos_with_the_basis_on_the_host_matches_the_device_basis():
    from landscape.curvature import CurvatureOperator, hutchpp, lanczos

    gpu = sample_problem("mlp", samples=128, device="cuda")
    op = CurvatureOperator(gpu)
    on_device = lanczos(op.matmat, op.size, k=3, tol=1e-6, device=op.device)
    on_host = lanczos(op.matmat, op.size, k=3, tol=1e-6, device=op.device, basis_device="cpu", basis="float32")
    assert on_host.eigenvectors is not None and on_host.eigenvectors.device.type == "cuda"
    torch.testing.assert_close(
        torch.as_tensor(on_host.eigenvalues), torch.as_tensor(on_device.eigenvalues), rtol=1e-5, atol=1e-8
    )
    a = hutchpp(op.matmat, op.size, matvecs=30, seed=1, device=op.device)
    b = hutchpp(op.matmat, op.size, matvecs=30, seed=1, device=op.device, basis_device="cpu", group_bytes=1)
    assert abs(a.value - b.value) <= 1e-4 * abs(a.value)
    op.close()


def test_cuda_slq_without_a_basis_matches_the_cpu():
    from landscape.curvature import CurvatureOperator, slq

    cpu = sample_problem("mlp", samples=128)
    gpu = sample_problem("mlp", samples=128, device="cuda")
    runs = []
    for p in (cpu, gpu):
        op = CurvatureOperator(p)
        runs.append(slq(op.matmat, op.size, probes=3, steps=20, seed=0, device=op.device, basis_bytes=3 * 8 * op.size))
        op.close()
    assert not runs[0].reorthogonalized and not runs[1].reorthogonalized
    torch.testing.assert_close(torch.as_tensor(runs[1].alpha), torch.as_tensor(runs[0].alpha), rtol=1e-6, atol=1e-9)


def test_cuda_bfloat16_sweep_is_close_to_float32():
    import landscape as ls

    bf16 = sample_problem("cnn", samples=256, device="cuda", dtype="bfloat16")
    f32 = sample_problem("cnn", samples=256, device="cuda", dtype="float32")
    axes = ls.random_axes(f32, 2, seed=0)
    a = ls.sweep(f32, axes, x=(-1, 1, 3), y=(-1, 1, 3))
    b = ls.sweep(bf16, axes, x=(-1, 1, 3), y=(-1, 1, 3))
    assert abs(b.loss - a.loss).max() <= 0.05 * abs(a.loss).max()
