"""Data too large to hold: a Dataset or DataLoader streamed batch by batch, decided by size and said.

The truth is a direct loop: the loss at each point computed on every sample in memory with the
model's weights written in, independently of the strategies and of the streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import landscape as ls
import landscape.datasource as datasource
from landscape.errors import LandscapeError


class MemmapImages(Dataset):
    """CIFAR-shaped uint8 images in a memory-mapped file, made float per item (as a user writes it);
    counts the items read."""

    def __init__(self, path, n: int):
        self.images = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, 32, 32))
        self.labels = np.arange(n) % 10
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        self.reads += 1
        return torch.from_numpy(self.images[i].astype(np.float32) / 255.0), int(self.labels[i])


def memmap_images(tmp_path, n: int = 48) -> MemmapImages:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.u8"
    rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8).tofile(path)
    return MemmapImages(path, n)


def direct_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, points: torch.Tensor):
    """Mean cross-entropy at theta + each row of `points` (already combined with the directions)."""
    params = dict(model.named_parameters())
    out = []
    with torch.no_grad():
        for delta in points:
            offset = 0
            for p in params.values():
                p.copy_((theta[offset : offset + p.numel()] + delta[offset : offset + p.numel()]).view_as(p))
                offset += p.numel()
            out.append(F.cross_entropy(model(x), y).item())
        offset = 0
        for p in params.values():
            p.copy_(theta[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    return np.array(out)


def test_a_streamed_torchvision_resnet_sweep_matches_a_direct_loop(tmp_path):
    """A torchvision ResNet-18 (BatchNorm, eval mode) on a memory-mapped Dataset, streamed: every
    grid point equals the direct loop on all samples in memory, and each pass reads every item."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    data = memmap_images(tmp_path)
    messages: list[str] = []
    problem = ls.Problem(model, data, batch_size=20, stream=True, say=messages.append)
    assert not problem.in_memory and problem.n == 48
    assert any("48 samples streamed batch by batch" in m and "as asked" in m for m in messages), messages
    with pytest.raises(LandscapeError, match="streamed"):
        _ = problem.x
    axes = ls.random_axes(problem, 2, seed=3)
    data.reads = 0
    surf = ls.sweep(problem, axes, x=(-0.5, 0.5, 3), y=(-0.5, 0.5, 2))
    assert surf.run["strategy"] not in ("firstlayer", "firstlayer-vmap", "firstlayer-fused", "mlp")
    assert data.reads % 48 == 0 and data.reads >= 48 * 6  # whole passes, at least one per point
    x = torch.stack([data[i][0] for i in range(48)])
    y = torch.tensor([data[i][1] for i in range(48)])
    cx, cy = np.meshgrid(surf.x, surf.y, indexing="ij")
    coords = torch.tensor(np.stack([cx.ravel(), cy.ravel()], 1), dtype=torch.float64)
    want = direct_losses(model, x, y, problem.theta, (coords @ axes.directions.double()).float())
    np.testing.assert_allclose(surf.loss.ravel(), want, rtol=2e-5, atol=1e-6)


def test_size_decides_and_the_decision_is_said(tmp_path, monkeypatch):
    """Collected when the tensors fit a quarter of the available memory, streamed otherwise; the
    same numbers either way (in memory the strategies may cache, streamed they may not)."""
    data = memmap_images(tmp_path, 40)
    size = 40 * (3 * 32 * 32 * 4 + 8)  # float32 images and int64 labels
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 10))
    said: list[str] = []
    monkeypatch.setattr(datasource, "available_memory", lambda device: 4 * size + 4)
    held = ls.Problem(model, data, say=said.append)
    assert held.in_memory and "40 samples held in memory" in said[-1] and "they fit" in said[-1]
    monkeypatch.setattr(datasource, "available_memory", lambda device: 4 * size - 4)
    streamed = ls.Problem(model, data, say=said.append)
    assert not streamed.in_memory and "40 samples streamed" in said[-1] and "over a quarter" in said[-1]
    axes = ls.random_axes(held, 2, seed=1)
    a = ls.sweep(held, axes, x=(-1, 1, 4), y=(-1, 1, 3))
    b = ls.sweep(streamed, axes, x=(-1, 1, 4), y=(-1, 1, 3))
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-5)
    np.testing.assert_allclose(b.accuracy, a.accuracy)
    assert b.run["strategy"] not in ("mlp", "firstlayer", "firstlayer-vmap")  # they cache per sample


def test_a_streamed_dataloader_of_dicts_runs_a_hugging_face_model():
    """A DataLoader of tokenized dict batches (as a Hugging Face pipeline gives them) to a GPT-2,
    streamed and split to the problem's batch size: the loss at the weights and the top Hessian
    eigenvalue equal the in-memory problem's."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50, (24, 12))
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(12, dtype=torch.long)} for i in range(24)]
    loader = DataLoader(rows, batch_size=10, shuffle=True)  # order does not change a mean
    streamed = ls.Problem(model, loader, loss="next-token", stream=True, batch_size=4, dtype="float64")
    held = ls.Problem(model, loader, loss="next-token", stream=False, dtype="float64")
    assert not streamed.in_memory and held.in_memory and streamed.n == held.n == 24
    assert max(yb.shape[0] for _, yb, _ in streamed.batches()) == 4
    axes = ls.random_axes(held, 1, seed=0)
    line_a = ls.sweep(held, axes, x=(-1, 1, 3))
    line_b = ls.sweep(streamed, axes, x=(-1, 1, 3))
    np.testing.assert_allclose(line_b.loss, line_a.loss, rtol=1e-10)
    top_a = ls.hessian(held, top_k=1, tol=1e-8, say=lambda m: None)
    top_b = ls.hessian(streamed, top_k=1, tol=1e-8, say=lambda m: None)
    assert top_b.lambda_max == pytest.approx(top_a.lambda_max, rel=1e-8)


def test_streamed_hessian_matches_the_exact_hessian():
    """Top eigenvalues of a tiny model's Hessian on streamed data against torch.func.hessian + eigh."""
    torch.manual_seed(1)
    x = torch.randn(30, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (30,))
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    problem = ls.Problem(model, TensorDataset(x, y), stream=True, batch_size=7)
    curv = ls.hessian(problem, top_k=2, tol=1e-10, say=lambda m: None)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts, offset = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = theta[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    exact = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat))
    np.testing.assert_allclose(curv.model.eigen.eigenvalues, exact.flip(0)[:2].numpy(), rtol=1e-7)


def test_a_streamed_subset_is_the_in_memory_subset(tmp_path):
    data = memmap_images(tmp_path, 40)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    held = ls.Problem(model, data, samples=9, seed=5, stream=False)
    streamed = ls.Problem(model, data, samples=9, seed=5, stream=True)
    assert streamed.n == held.n == 9
    xs = torch.cat([xb for xb, _, _ in streamed.batches()])
    assert torch.equal(xs, held.x)
    with pytest.raises(ls.ArgumentError, match="give its Dataset"):
        ls.Problem(model, DataLoader(data, batch_size=8), samples=9, stream=True)


def test_a_target_out_of_range_in_a_later_streamed_batch_is_one_clear_error():
    x = torch.randn(200, 4)
    y = torch.randint(0, 3, (200,))
    y[150] = 7
    model = nn.Linear(4, 3)
    problem = ls.Problem(model, TensorDataset(x, y), stream=True, batch_size=64)
    with pytest.raises(LandscapeError, match=r"samples 128 on: the target 7 .* not a class of the model's 3 outputs"):
        list(problem.batches())


def test_cli_streams_a_dataset_and_says_so(cli, tmp_path):
    """`--stream` on a `file.py:fn` Dataset: the output says it and the numbers equal `--no-stream`'s."""
    (tmp_path / "task.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return TensorDataset(torch.randn(90, 5, generator=g), torch.randint(0, 3, (90,), generator=g))\n"
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    common = ["--model", f"{tmp_path}/task.py:make", "--checkpoint", str(tmp_path / "w.pt"),
              "--data", f"{tmp_path}/task.py:data", "--x", "-1:1:5", "--y", "-1:1:5"]  # fmt: skip
    r = cli("sweep", *common, "--stream", "--batch-size", "32", "-o", str(tmp_path / "s.h5"))
    assert r.code == 0 and "90 samples streamed batch by batch" in r.out + r.err, r
    r = cli("sweep", *common, "--no-stream", "-o", str(tmp_path / "m.h5"))
    assert r.code == 0 and "90 samples held in memory" in r.out + r.err, r
    a, b = ls.load(tmp_path / "s.h5"), ls.load(tmp_path / "m.h5")
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)


def test_streamed_shards_products_sum_to_the_full_product():
    """Under torchrun a streamed Dataset is shared by index: each rank reads only its rows, and the
    ranks' Hessian products add up to the product on all the data held in memory."""
    from landscape.curvature import CurvatureOperator
    from landscape.distributed import World, shard_problem

    torch.manual_seed(2)
    x, y = torch.randn(61, 5, dtype=torch.float64), torch.randint(0, 3, (61,))
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = TensorDataset(x, y)
    held = ls.Problem(model, data, stream=False)
    streamed = ls.Problem(model, data, stream=True)
    parts = [shard_problem(World(rank=r, size=3), streamed) for r in range(3)]
    assert [p.n for p in parts] == [21, 20, 20] and not any(p.in_memory for p in parts)
    assert torch.equal(torch.cat([xb for p in parts for xb, _, _ in p.batches()]), x)
    V = torch.randn(2, held.layout.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = CurvatureOperator(held, method="double-backward", batch_size=8).matmat(V)
    ops = [CurvatureOperator(p, method="double-backward", batch_size=8, n_total=61) for p in parts]
    total = sum(op.matmat(V) for op in ops)
    assert float((total - ref).norm() / ref.norm()) < 1e-12
    with pytest.raises(LandscapeError, match="cannot be shared between processes"):
        shard_problem(World(rank=0, size=2), ls.Problem(model, DataLoader(data, batch_size=8), stream=True))


def test_items_of_different_shapes_are_one_clear_error():
    rows = [(torch.randn(3 + (i == 4)), 0) for i in range(6)]  # the fifth sequence is one longer
    model = nn.Linear(3, 2)
    for stream in (False, True):
        with pytest.raises(LandscapeError, match=r"'0' differs in shape between items .*pad every sequence"):
            ls.Problem(model, rows_dataset(rows), stream=stream, batch_size=8).batches().__next__()


def rows_dataset(rows: list) -> Dataset:
    class Rows(Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int):
            return rows[i]

    return Rows()
