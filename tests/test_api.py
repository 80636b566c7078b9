"""The Python API: a notebook-style script (no CLI, no subprocess, no file unless asked) against the
CLI's files for the same settings, results that round-trip through their files, one-line errors
that name parameters (and options in the CLI), and the layering rules of the package."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import landscape as ls
from landscape.sample_models import models

SAMPLES = Path(models.__file__).parent


def _notebook_problem(name: str, checkpoint: str = "final.pt") -> ls.Problem:
    """What a notebook does: build the model, load its weights and data by hand, make a Problem."""
    model = getattr(models, name)()
    model.load_state_dict(torch.load(SAMPLES / name / checkpoint, weights_only=True))
    with np.load(SAMPLES / name / "data.npz") as z:
        x, y = torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    return ls.Problem(model, (x, y), loss="cross-entropy" if name != "linreg" else "mse", dtype=torch.float64)


def _items(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an HDF5 file, by path."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        out.update({f"/@{k}": v for k, v in f.attrs.items()})

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            out.update({f"{name}@{k}": v for k, v in obj.attrs.items()})  # type: ignore[attr-defined]

        f.visititems(visit)
    return out


def _equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) and a.dtype.names:
        return a.tolist() == b.tolist()  # type: ignore[union-attr]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or isinstance(a, (float, np.floating)):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f")
    return a == b


def test_notebook_script_matches_the_cli(cli, tmp_path):
    """The notebook's numbers equal the CLI's file for the same settings (1e-12, float64)."""
    problem = _notebook_problem("mlp")
    axes = ls.random_axes(problem, 2, norm="filter", ignore="biasbn", seed=0)
    surf = ls.sweep(problem, axes, x=(-1, 1, 7), y=(-0.5, 1, 5))
    assert not list(tmp_path.iterdir())  # nothing written unless asked
    cli("sweep", "--sample", "mlp", "--x", "-1:1:7", "--y", "-0.5:1:5", "--dtype", "float64", "-o", tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        np.testing.assert_allclose(surf.loss, f["sweep/loss"][()], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(surf.accuracy, f["sweep/accuracy"][()], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(surf.axes.directions.numpy(), np.stack([f["axes/x"][()], f["axes/y"][()]]))
    # the value at a grid point is the loss at those weights, computed directly
    i, j = 5, 1
    w = problem.theta + surf.x[i] * axes.directions[0] + surf.y[j] * axes.directions[1]
    model = _notebook_problem("mlp").model
    torch.nn.utils.vector_to_parameters(w, model.parameters())
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(problem.x), problem.y).item()
    assert surf.loss[i, j] == pytest.approx(want, rel=1e-12)

    curv = ls.hessian(problem, top_k=3, trace=True, density=True, seed=0)
    cli(
        "hessian",
        "--sample",
        "mlp",
        "--top-k",
        "3",
        "--trace",
        "--density",
        "--dtype",
        "float64",
        "-o",
        tmp_path / "c.h5",
    )
    from_cli = ls.load(tmp_path / "c.h5")
    assert isinstance(from_cli, ls.CurvatureResult)
    np.testing.assert_allclose(curv.eigenvalues, from_cli.eigenvalues, rtol=1e-12)
    assert curv.trace == pytest.approx(from_cli.trace, rel=1e-12)
    np.testing.assert_allclose(curv.model.density.values, from_cli.model.density.values, rtol=1e-10, atol=1e-12)

    rough = ls.roughness(problem, directions=4, span=0.1, steps=4, seed=0)
    cli(
        "roughness",
        "--sample",
        "mlp",
        "--directions",
        "4",
        "--steps",
        "4",
        "--dtype",
        "float64",
        "-o",
        tmp_path / "r.h5",
    )
    assert rough.ri == pytest.approx(ls.load(tmp_path / "r.h5").ri, rel=1e-12, abs=1e-12)

    first = torch.load(SAMPLES / "mlp" / "ckpt_000.pt", weights_only=True)
    start = _notebook_problem("mlp", "ckpt_000.pt")
    line = ls.path(start, torch.load(SAMPLES / "mlp" / "ckpt_004.pt", weights_only=True), points=5, start=first)
    cli("path", "--sample", "mlp", "--points", "5", "--dtype", "float64", "-o", tmp_path / "p.h5")
    np.testing.assert_allclose(line["loss"], ls.load(tmp_path / "p.h5").arrays["loss"], rtol=1e-12)
    assert line.barrier == pytest.approx(ls.load(tmp_path / "p.h5").barrier, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "command",
    [
        ("sweep", "--sample", "cnn", "--x", "-1:1:4", "--y", "-1:1:3"),
        ("hessian", "--sample", "linreg", "--trace", "--density", "--per-layer"),
        ("roughness", "--sample", "linreg", "--directions", "3", "--steps", "4"),
        ("sharpness", "--sample", "linreg", "--hessian"),
        ("path", "--sample", "linreg", "--points", "5"),
        ("plane", "--sample", "linreg", "--x", "-1:1:3", "--y", "-1:1:3"),
        ("trajectory", "--sample", "linreg", "--x", "-1:1:3", "--y", "-1:1:3"),
        ("track", "--sample", "linreg"),
    ],
    ids=lambda c: c[0],
)
def test_load_then_save_writes_the_cli_file_again(command, cli, tmp_path):
    """ls.load gives the command's result type, and its save() writes the CLI's file field by field."""
    original, copy = tmp_path / "cli.h5", tmp_path / "saved.h5"
    r = cli(*command, "-o", original)
    assert r.code == 0, r.err
    result = ls.load(original)
    kinds = {"sweep": ls.SweepResult, "plane": ls.SweepResult, "trajectory": ls.SweepResult, "hessian": ls.CurvatureResult,
             "roughness": ls.RoughnessResult, "sharpness": ls.SharpnessResult, "path": ls.PathResult, "track": ls.TrackResult}  # fmt: skip
    assert isinstance(result, kinds[command[0]])
    result.save(copy)
    want, got = _items(original), _items(copy)
    assert set(want) == set(got)
    differ = [k for k in want if not _equal(want[k], got[k])]
    assert differ == []


def test_in_memory_save_has_the_layout_of_the_cli_file(cli, tmp_path):
    """A sweep saved from a notebook holds the same datasets and attributes as the CLI's, equal numbers."""
    problem = _notebook_problem("cnn")
    surf = ls.sweep(problem, ls.random_axes(problem, 2, seed=0), x=(-1, 1, 4), y=(-1, 1, 3))
    surf.save(tmp_path / "nb.h5")
    cli("sweep", "--sample", "cnn", "--x", "-1:1:4", "--y", "-1:1:3", "--dtype", "float64", "-o", tmp_path / "cli.h5")
    nb, ref = _items(tmp_path / "nb.h5"), _items(tmp_path / "cli.h5")
    assert set(nb) == set(ref)
    for key in ("sweep/loss", "sweep/accuracy", "sweep/done", "sweep/coords/x", "axes/x", "axes/y"):
        np.testing.assert_allclose(nb[key], ref[key], rtol=1e-12, atol=1e-12)
    assert ls.load(tmp_path / "nb.h5").provenance["checkpoint"] == "Sequential (in memory)"


def test_results_plot_without_files(tmp_path):
    problem = _notebook_problem("linreg")
    surf = ls.sweep(problem, ls.random_axes(problem, 2, seed=1), x=(-1, 1, 5), y=(-1, 1, 5))
    fig = surf.plot("contour")
    assert fig.axes and fig.axes[0].get_xlabel()
    assert surf.plot("heatmap", backend="plotly").data[0].type == "heatmap"
    curv = ls.hessian(problem, top_k=2, density=True)
    assert curv.plot("density").axes
    assert ls.roughness(problem, 3, steps=4).plot().axes
    assert not list(tmp_path.iterdir())


def test_data_in_every_form_gives_the_same_problem():
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    model = torch.nn.Linear(5, 3)
    pair = ls.Problem(model, (x, y))
    columns = ls.Problem(model, {"x": x, "y": y})
    dataset = ls.Problem(model, torch.utils.data.TensorDataset(x, y))
    loader = ls.Problem(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7))
    apart = ls.Problem(model, x, targets=y)
    for p in (columns, dataset, loader, apart):
        assert torch.equal(p.x, pair.x) and torch.equal(p.y, pair.y)
    assert pair.loss_name == "cross-entropy" and pair.classification


def test_errors_name_the_parameter_and_the_cli_names_the_option(cli, tmp_path):
    problem = ls.Problem(torch.nn.Linear(3, 2), (torch.randn(8, 3), torch.randint(0, 2, (8,))))
    with pytest.raises(ls.ArgumentError, match=r"^norm='fliter': expected one of filter"):
        ls.random_axes(problem, 2, norm="fliter")
    with pytest.raises(ls.ArgumentError, match=r"^top_k=0: nothing to compute"):
        ls.hessian(problem, top_k=0)
    with pytest.raises(ls.ArgumentError, match=r"^loss='hinge'"):
        ls.Problem(torch.nn.Linear(3, 2), (torch.randn(8, 3), torch.randint(0, 2, (8,))), loss="hinge")
    r = cli("hessian", "--sample", "linreg", "--top-k", "0", "-o", tmp_path / "c.h5")
    assert r.code == 2 and r.err.startswith("error: --top-k 0: nothing to compute") and not (tmp_path / "c.h5").exists()


def test_the_library_prints_nothing_unless_asked(capsys, caplog):
    problem = ls.Problem(torch.nn.Linear(3, 2), (torch.randn(8, 3), torch.randint(0, 2, (8,))))
    with caplog.at_level(logging.INFO, logger="landscape"):
        ls.hessian(problem, top_k=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert any("products by" in r.getMessage() for r in caplog.records)  # the messages went to the logger


LAYERS = {
    "core": ("landscape.params", "landscape.directions", "landscape.problem", "landscape.model_io", "landscape.losses",
             "landscape.data", "landscape.axes", "landscape.settings", "landscape.strategies", "landscape.curvature",
             "landscape.measures", "landscape.paths", "landscape.tracking", "landscape.fused", "landscape.mlp",
             "landscape.distributed"),
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    """Every landscape module a file imports, at any depth (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("landscape"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("landscape"))
    return found


def _module(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")


def test_import_rules_hold():
    """cli may import anything; render and io never import cli; the numerical core never imports io, render or cli."""
    root = Path(ls.__file__).parent
    broken = []
    for path in root.rglob("*.py"):
        name = _module(path, root)
        for imported in _imports(path):
            if name.startswith(("landscape.render", "landscape.io")) and imported.startswith("landscape.cli"):
                broken.append(f"{name} imports {imported}")
            core = any(name == c or name.startswith(c + ".") for c in LAYERS["core"])
            if core and imported.startswith(
                ("landscape.io", "landscape.render", "landscape.cli", "landscape.api", "landscape.results")
            ):
                broken.append(f"{name} imports {imported}")
    assert broken == []


def test_a_notebook_shows_each_object_in_a_line_with_its_numbers():
    """A result printed in a notebook showed every parameter name and shape of the layout (a 3M-parameter
    segmentation model: tens of thousands of characters); now one line holds the numbers that matter."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh()) for _ in range(40)])
    problem = ls.Problem(model, (torch.randn(32, 6), torch.randint(0, 6, (32,))))
    axes = ls.random_axes(problem, 2)
    sweep = ls.sweep(problem, axes, x=(-1, 1, 3), y=(-1, 1, 3))
    curvature = ls.hessian(problem, top_k=2, trace=True)
    rough = ls.roughness(problem, directions=3, steps=4)
    shown = dict(
        zip(("problem", "axes", "sweep", "curvature", "rough"), map(repr, (problem, axes, sweep, curvature, rough)))
    )
    for text in shown.values():
        assert len(text) < 400 and "\n" not in text and "39.0.weight" not in text, text
    assert shown["problem"] == "Problem(Sequential, 1,680 parameters, 32 samples, loss cross-entropy, cpu float32)"
    assert "filter-normalized random direction 2; 1,680 parameters" in shown["axes"]
    assert f"loss {np.nanmin(sweep.loss):.4g} to {np.nanmax(sweep.loss):.4g}" in shown["sweep"]
    assert "9 of 9 points" in shown["sweep"]
    assert f"eigenvalues [{curvature.eigenvalues[0]:.6g}, {curvature.eigenvalues[1]:.6g}]" in shown["curvature"]
    assert f"trace {curvature.trace:.6g}" in shown["curvature"]
    assert f"ri={rough.ri:.6g}" in shown["rough"] and "loss[3, 5]" in shown["rough"]


def test_a_torch_compiled_model_is_studied_through_its_own_module():
    """torch.compile(model) gave parameter names under `_orig_mod.` (not the checkpoint's), and every
    strategy ran through the compiled wrapper (the sweep took 4 s on a 67-parameter MLP: compiles)."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    said: list[str] = []
    problem = ls.Problem(torch.compile(plain), data, say=said.append)
    assert problem.model is plain and problem.layout.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert said[0] == "the model is torch.compile'd: its module (Sequential) is used, with its own parameter names"
    axes = ls.random_axes(problem, 1)
    twin = ls.sweep(ls.Problem(plain, data), axes, x=(-1, 1, 3)).loss  # the strategies may differ: equal to rounding
    np.testing.assert_allclose(ls.sweep(problem, axes, x=(-1, 1, 3)).loss, twin, rtol=1e-6)
