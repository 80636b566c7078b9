"""Bad input on real library models (built here with random weights): checkpoints with NaN, meta or
sparse tensors, targets that are not classes of the model, seeds and grids out of range, outputs
that cannot be files. Each is one line naming what is wrong, exit 2, and no file written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from landscape.errors import ArgumentError, LandscapeError
from landscape.io.samples import sample
from landscape.strategies.grid import BYTES_PER_POINT, check_grid_fits


def _import(name: str):
    try:
        return pytest.importorskip(name)
    except ImportError as exc:
        pytest.skip(f"{name} does not import beside torch {torch.__version__}: {exc}")


def _one_error(res) -> str:
    lines = [line for line in res.err.splitlines() if line.startswith("error:")]
    assert res.code == 2 and len(lines) == 1 and "Traceback" not in res.err, (res.code, res.err)
    return lines[0]


@pytest.fixture
def mobilenet(tmp_path):
    """torchvision's MobileNetV3-small (4 classes), its factory file, state_dict and 8 images."""
    torchvision = _import("torchvision")
    (tmp_path / "models.py").write_text(
        textwrap.dedent("""
        import torchvision

        def net():
            return torchvision.models.mobilenet_v3_small(num_classes=4)
    """)
    )
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    np.savez(tmp_path / "images.npz", x=x.numpy(), y=np.array([0, 1, 2, 3, 3, 2, 1, 0]))
    return net, f"{tmp_path / 'models.py'}:net", x


def _run(cli, tmp_path, factory, state, labels=None, *extra):
    torch.save(state, tmp_path / "ckpt.pt")
    data = tmp_path / "images.npz"
    if labels is not None:
        with np.load(data) as d:
            np.savez(tmp_path / "relabelled.npz", x=d["x"], y=np.asarray(labels))
        data = tmp_path / "relabelled.npz"
    out = tmp_path / "out.h5"
    res = cli(
        "sweep",
        "--model",
        factory,
        "--checkpoint",
        tmp_path / "ckpt.pt",
        "--data",
        data,
        "--x",
        "-1:1:3",
        *extra,
        "-o",
        out,
    )
    return res, out


def test_nan_weights_stop_naming_the_tensor(cli, tmp_path, mobilenet):
    net, factory, _ = mobilenet
    state = net.state_dict()
    state["features.3.block.1.0.weight"] = state["features.3.block.1.0.weight"].clone()
    state["features.3.block.1.0.weight"].view(-1)[[3, 7]] = torch.tensor([float("nan"), float("inf")])
    res, out = _run(cli, tmp_path, factory, state)
    line = _one_error(res)
    assert "ckpt.pt: features.3.block.1.0.weight holds 2 NaN or infinite value(s)" in line, line
    assert not out.exists()


def test_meta_tensors_are_refused_by_name(cli, tmp_path, mobilenet):
    torchvision = _import("torchvision")
    _, factory, _ = mobilenet
    with torch.device("meta"):
        hollow = torchvision.models.mobilenet_v3_small(num_classes=4)
    res, out = _run(cli, tmp_path, factory, hollow.state_dict())
    line = _one_error(res)
    assert "ckpt.pt: features.0.0.weight is a meta tensor" in line, line
    assert not out.exists()


def test_sparse_tensors_are_read_as_dense_with_the_same_numbers(cli, tmp_path, mobilenet):
    net, factory, _ = mobilenet
    dense = net.state_dict()
    res, out = _run(cli, tmp_path, factory, dense)
    assert res.code == 0, res.err
    with h5py.File(out, "r") as f:
        want = f["sweep/loss"][()]
    sparse = dict(dense)
    sparse["classifier.3.weight"] = dense["classifier.3.weight"].to_sparse()
    res, out = _run(cli, tmp_path, factory, sparse, None, "--force")
    assert res.code == 0, res.err
    assert "classifier.3.weight is stored as a sparse_coo tensor: read as dense" in res.err
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["sweep/loss"][()], want)


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        ([0, 1, 2, 3, 4, 2, 1, 0], "the target 4 of sample 4 (and 0 more) is not a class of the model's 4 outputs"),
        ([0, 1, -3, 3, 3, -1, 1, 0], "the target -3 of sample 2 (and 1 more) is not a class of the model's 4 outputs"),
    ],
)
def test_targets_that_are_not_classes_of_the_model(cli, tmp_path, mobilenet, labels, said):
    net, factory, _ = mobilenet
    res, out = _run(cli, tmp_path, factory, net.state_dict(), labels)
    line = _one_error(res)
    assert "relabelled.npz: " in line and said in line and "expected 0 to 3, or -100 to ignore" in line, line
    assert not out.exists()


def test_ignored_targets_still_work(cli, tmp_path, mobilenet):
    """-100 (PyTorch's ignore_index) is not a bad label: the loss leaves it out."""
    net, factory, x = mobilenet
    labels = [0, 1, -100, 3, 3, -100, 1, 0]
    res, out = _run(cli, tmp_path, factory, net.state_dict(), labels, "--x", "0:0:1")
    assert res.code == 0, res.err
    with h5py.File(out, "r") as f:
        loss = float(f["sweep/loss"][0])
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(net(x), torch.tensor(labels), ignore_index=-100)
    assert loss == pytest.approx(float(want), rel=1e-5)


def test_token_targets_beyond_the_vocabulary(cli, tmp_path):
    transformers = _import("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    ids = torch.randint(0, 32, (4, 10))
    labels = ids.clone()
    labels[2, 6] = 40
    torch.save({"input_ids": ids, "labels": labels}, tmp_path / "tokens.pt")
    res = cli(
        "sweep", "--checkpoint", tmp_path / "gpt2", "--data", tmp_path / "tokens.pt", "--loss", "next-token",
        "--x", "0:0:1", "-o", tmp_path / "lm.h5",
    )  # fmt: skip
    line = _one_error(res)
    assert "the target 40 of position [2, 6]" in line and "model's 32 outputs" in line, line


def test_seed_out_of_range(cli, tmp_path):
    for seed in ("99999999999999999999999", str(-(2**64))):
        res = cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "--seed", seed, "-o", tmp_path / "s.h5")
        assert f"--seed {seed}: too large" in _one_error(res)
    assert not list(tmp_path.iterdir())
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "--seed", str(2**40), "-o", tmp_path / "s.h5").code == 0


def test_grid_too_large_is_refused_before_anything_is_written(cli, tmp_path):
    res = cli("sweep", "--sample", "linreg", "--x", "-1:1:100000", "--y", "-1:1:100000", "-o", tmp_path / "s.h5")
    line = _one_error(res)
    assert "a grid of 100,000 x 100,000 = 10,000,000,000 points needs about 1,117.6 GiB" in line, line
    assert not list(tmp_path.iterdir())
    gib = 2**30
    check_grid_fits((1000, 1000), memory=gib)  # 120 MB of 1 GiB: fits
    with pytest.raises(ArgumentError, match=r"^x: a grid of 5,000,000 points needs about 0.6 GiB of memory"):
        check_grid_fits((5_000_000,), memory=gib)
    assert 5_000_000 * BYTES_PER_POINT > gib // 2 > 1000 * 1000 * BYTES_PER_POINT


def test_outputs_that_cannot_be_files(cli, tmp_path):
    sweep = tmp_path / "s.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", sweep).code == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for args in (
        ("sweep", "--sample", "linreg", "--x", "-1:1:3"),
        ("hessian", "--sample", "linreg"),
        ("roughness", "--sample", "linreg"),
        ("plot", sweep),
        ("report", sweep),
        ("export", sweep),
    ):
        suffix = {"plot": ".png", "report": ".html", "export": ".csv"}.get(args[0], ".h5")
        line = _one_error(cli(*args, "-o", blocker / f"x{suffix}"))
        assert f"--output {blocker / f'x{suffix}'}: {blocker} is a file, not a folder" in line, line
        force = ("--force",) if args[0] in ("sweep", "hessian", "roughness") else ()
        line = _one_error(cli(*args, "-o", tmp_path, *force))
        assert f"--output {tmp_path}: is a folder" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "s.h5"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("hessian", "--sample", "linreg", "--max-iter", "0"), "--max-iter 0: must be at least 1"),
        (("sharpness", "--sample", "linreg", "--ascent-steps", "-1"), "--ascent-steps -1: must be at least 1"),
        (("track", "--sample", "linreg", "--tol", "0"), "--tol 0.0: must be positive"),
        (("sweep", "--sample", "linreg", "--batch-size", "-1"), "--batch-size -1: must be positive"),
        (("sweep", "--sample", "linreg", "--batch-size", "0"), "--batch-size 0: must be positive"),
        (
            ("sweep", "--sample", "linreg", "--dist-timeout", "0"),
            "--dist-timeout 0.0: must be a positive number up to 604800",
        ),
        (("hessian", "--sample", "linreg", "--dist-timeout", "nan"), "--dist-timeout nan: must be a positive number"),
        (("roughness", "--sample", "linreg", "--directions", "0"), "--directions 0: need at least 2 directions"),
        (("roughness", "--sample", "linreg", "--directions", "10000000000"), "directions x 21 points need about"),
        (
            ("roughness", "--sample", "linreg", "--steps", "100000000000"),
            "100 directions x 100,000,000,001 points need",
        ),
        (("sharpness", "--sample", "linreg", "--epsilon", "inf"), "--epsilon inf: must be a positive number"),
        (("sharpness", "--sample", "linreg", "--rho", "nan"), "--rho nan: must be a positive number"),
        (
            ("path", "--sample", "mlp", "--points", "10000000000"),
            "--points 10000000000: a grid of 10,000,000,000 points",
        ),
    ],
)
def test_numeric_options_out_of_range(cli, tmp_path, args, said):
    assert said in _one_error(cli(*args, "-o", tmp_path / "out.h5"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (("--levels", "100000000"), "--levels 100000000: must be from 1 to 1000"),
        (("--levels", "0"), "--levels 0: must be from 1 to 1000"),
        (("--vmin", "nan"), "--vmin nan: must be a finite number"),
        (("--vmax", "inf"), "--vmax inf: must be a finite number"),
        (("--sigma", "-1"), "--sigma -1.0: must be a positive number"),
    ],
)
def test_plot_options_out_of_range(cli, tmp_path, option, said):
    sweep = tmp_path / "s.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", sweep).code == 0
    assert said in _one_error(cli("plot", sweep, *option, "-o", tmp_path / "f.png"))
    assert not (tmp_path / "f.png").exists()


def test_a_config_section_that_names_no_command_is_refused(cli, tmp_path):
    """A [defaults] or misspelt [sweeps] section was skipped without a word (its settings never applied)."""
    config = tmp_path / "run.toml"
    config.write_text('[sweeps]\nx = "-1:1:3"\n')
    line = _one_error(cli("sweep", "--sample", "linreg", "--config", config, "-o", tmp_path / "s.h5"))
    assert f"--config {config}: unknown section [sweeps]; sections are named after commands (" in line, line
    assert not (tmp_path / "s.h5").exists()


def test_a_config_file_cannot_turn_on_unsafe_pickle(cli, tmp_path):
    """A config travels with checkpoints (a shared folder, a repository): it may not switch on unpickling."""
    config = tmp_path / "run.toml"
    config.write_text('[sweep]\nunsafe_pickle = true\nx = "-1:1:3"\n')
    line = _one_error(cli("sweep", "--sample", "linreg", "--config", config, "-o", tmp_path / "s.h5"))
    assert f"--config {config}: unsafe_pickle = true is refused" in line and "only the command line" in line
    assert not (tmp_path / "s.h5").exists()
    config.write_text('[sweep]\nunsafe_pickle = false\nx = "-1:1:3"\n')
    assert cli("sweep", "--sample", "linreg", "--config", config, "-o", tmp_path / "s.h5").code == 0
    help_text = cli("sweep", "--help").out
    assert "imports and runs that file" in " ".join(help_text.replace("│", " ").split())


def test_outputs_that_are_inputs_or_not_regular_files_are_refused(cli, tmp_path):
    """-o naming a command's own input overwrote it (a checkpoint, the data, the file to draw, the
    model's source); -o /dev/null --force as root replaced the device node."""
    from landscape.io.samples import sample

    linreg = sample("linreg")
    ckpt, data = tmp_path / "w.pt", tmp_path / "d.npz"
    ckpt.write_bytes(Path(linreg["checkpoint"]).read_bytes())
    data.write_bytes(Path(linreg["data"]).read_bytes())
    (tmp_path / "net.py").write_text("from landscape.sample_models.models import linreg as make\n")
    load = ["--model", f"{tmp_path / 'net.py'}:make", "--checkpoint", ckpt, "--data", data]
    before = {p: p.read_bytes() for p in (ckpt, data, tmp_path / "net.py")}
    for target, said in ((ckpt, "--checkpoint"), (data, "--data"), (tmp_path / "net.py", "--model")):
        for command in ("sweep", "hessian", "roughness"):
            line = _one_error(cli(command, *load, "-o", target, "--force"))
            assert f"--output {target}: is {said} of this command; write it elsewhere" in line, line
    own = Path(linreg["checkpoint"])
    kept = own.read_bytes()
    try:
        line = _one_error(cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", own, "--force"))
        assert "is a file of --sample linreg" in line, line
    finally:
        if own.read_bytes() != kept:  # never leave the bundled sample broken for the other tests
            own.write_bytes(kept)
    sweep = tmp_path / "s.h5"
    assert cli("sweep", *load, "--x", "-1:1:3", "-o", sweep).code == 0
    drawn = sweep.read_bytes()
    for command in ("plot", "report", "export"):
        line = _one_error(cli(command, sweep, "-o", sweep, "--force"))
        assert f"--output {sweep}: is an input of this command" in line, line
    assert sweep.read_bytes() == drawn and all(p.read_bytes() == b for p, b in before.items())
    if Path("/dev/null").exists():
        line = _one_error(cli("sweep", *load, "-o", "/dev/null", "--force"))
        assert "--output /dev/null: not a regular file" in line, line
        assert Path("/dev/null").is_char_device()


def test_an_output_link_is_written_through_and_a_hard_link_to_an_input_is_refused(cli, tmp_path):
    """-o /dev/stdout as root replaced the /dev/stdout link itself with a results file: a symbolic
    link as -o now has the file it names replaced, the link kept; a hard link to the data is its input."""
    real, link = tmp_path / "real.h5", tmp_path / "latest.h5"
    link.symlink_to(real.name)
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", link).code == 0
    assert link.is_symlink() and real.is_file() and h5py.is_hdf5(real)
    assert not (tmp_path / "latest.h5.lock").exists() and not (tmp_path / "real.h5.lock").exists()
    data = tmp_path / "d.npz"
    data.write_bytes(Path(sample("linreg")["data"]).read_bytes())
    (tmp_path / "also.npz").hardlink_to(data)
    line = _one_error(cli("sweep", "--sample", "linreg", "--data", data, "-o", tmp_path / "also.npz", "--force"))
    assert f"--output {tmp_path / 'also.npz'}: is --data of this command" in line, line


def test_plot_report_export_refuse_an_existing_output_without_force(cli, tmp_path):
    sweep = tmp_path / "s.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", sweep).code == 0
    for command, name in (("plot", "f.png"), ("report", "r.html"), ("export", "e.csv")):
        out = tmp_path / name
        assert cli(command, sweep, "-o", out).code == 0
        first = out.read_bytes()
        out.write_bytes(b"someone's file")
        assert f"{out} exists: pass --force to overwrite it" in _one_error(cli(command, sweep, "-o", out))
        assert out.read_bytes() == b"someone's file"
        assert cli(command, sweep, "-o", out, "--force").code == 0 and out.read_bytes() == first


@pytest.mark.parametrize(
    ("args", "name", "said"),
    [
        (("sweep", "--sample", "linreg", "--x", "-1:1:3"), "s.png", "a results file is HDF5; name it .h5 (a figure goes to --figure s.png)"),
        (("hessian", "--sample", "linreg", "--top-k", "1"), "c.html", "a results file is HDF5; name it .h5"),
        (("roughness", "--sample", "linreg", "--directions", "2"), "r.pdf", "a results file is HDF5; name it .h5"),
        (("sweep", "--sample", "mlp", "--x", "-1:1:3", "--y", "-1:1:3", "--axes", "hessian", "--norm", "layer"), "s.h5",
         "--norm applies to random axes; --axes hessian gives unit eigenvectors"),
        (("sweep", "--sample", "mlp", "--x", "-1:1:3", "--y", "-1:1:3", "--axes", "hessian", "--ignore", "none"), "s.h5",
         "--ignore applies to random axes"),
    ],
)  # fmt: skip
def test_options_that_were_silently_accepted(cli, tmp_path, args, name, said):
    """HDF5 written under a figure's name, and a normalization Hessian axes ignore: one-line errors, no file."""
    assert said in _one_error(cli(*args, "-o", tmp_path / name))
    assert not list(tmp_path.iterdir())


def test_more_samples_than_the_data_has_is_said(cli, tmp_path):
    res = cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "--samples", "5000", "-o", tmp_path / "s.h5")
    assert res.code == 0 and "5,000 samples asked for; the data has" in res.err + res.out, res


def test_inputs_given_as_a_tuple_of_tensors_are_refused_with_the_dict_that_works():
    """A two-input model's data as ((x1, x2), y) failed in torch.as_tensor: "only one element tensors can be
    converted to Python scalars". The error now says how to give them: a dict of keyword inputs."""
    import landscape as ls

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.a(x1)) - torch.relu(self.a(x2)))

    x1, x2, y = torch.randn(16, 4), torch.randn(16, 4), torch.randint(0, 2, (16,))
    with pytest.raises(LandscapeError, match=r"^data: the inputs are 2 tensors in a tuple; give them as a dict"):
        ls.Problem(Pair(), ((x1, x2), y))
    model = Pair()
    problem = ls.Problem(model, {"x1": x1, "x2": x2, "y": y})
    want = torch.nn.functional.cross_entropy(model(x1, x2), y)
    assert ls.sweep(problem, ls.random_axes(problem, 1), x=(0, 0, 1)).loss[0] == pytest.approx(float(want), rel=1e-6)


def test_a_torchscript_model_sweeps_and_refuses_curvature_in_one_line():
    """torch.func.functional_call refuses TorchScript modules: the Hessian and the gradient raised "The
    stateless API can't be used with Jitted modules"; the sweep's loop writes weights in place and runs."""
    import warnings

    import landscape as ls

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with warnings.catch_warnings(action="ignore", category=FutureWarning):  # torch.jit.script is deprecated
        scripted = torch.jit.script(plain)
    data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    problem = ls.Problem(scripted, data)
    for compute in (lambda: ls.hessian(problem, top_k=1), lambda: ls.sharpness(problem)):
        with pytest.raises(
            LandscapeError, match=r"^the model is TorchScript \(torch.jit\), and gradients and curvature"
        ):
            compute()
    axes = ls.random_axes(problem, 1)
    np.testing.assert_allclose(
        ls.sweep(problem, axes, x=(-1, 1, 3)).loss,
        ls.sweep(ls.Problem(plain, data), axes, x=(-1, 1, 3)).loss,
        rtol=1e-6,
    )
