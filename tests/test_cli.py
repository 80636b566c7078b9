"""The CLI end to end: error cases (one line, non-zero exit, no complete-looking file), resume, config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ctrl_c_reaches_it

from landscape.io.results import read_sweep
from landscape.io.samples import sample

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("--x", "-1:1:3", "--samples", "64")


def one_line_error(r, *needles):
    assert r.code == 2, (r.code, r.err)
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip()]
    err_lines = [ln for ln in lines if ln.startswith("error:")]
    assert len(err_lines) == 1, r.err
    assert "Traceback" not in r.err
    for n in needles:
        assert n in err_lines[0], err_lines[0]


def test_missing_files(cli, tmp_path):
    out = tmp_path / "o.h5"
    one_line_error(
        cli("sweep", "--sample", "mlp", "--checkpoint", tmp_path / "nope.pt", *SMALL, "-o", out), "nope.pt", "not found"
    )
    one_line_error(
        cli("sweep", "--sample", "mlp", "--data", tmp_path / "nope.npz", *SMALL, "-o", out), "--data", "nope.npz"
    )
    one_line_error(
        cli("sweep", "--sample", "mlp", "--model", f"{tmp_path}/nope.py:f", *SMALL, "-o", out), "--model", "nope.py"
    )
    one_line_error(cli("sweep", "--model", "x:y", "-o", out), "missing --checkpoint, --data")
    assert not out.exists()


def test_wrong_keys_and_shapes(cli, tmp_path):
    out = tmp_path / "o.h5"
    one_line_error(
        cli("sweep", "--sample", "mlp", "--checkpoint", sample("cnn")["checkpoint"], *SMALL, "-o", out),
        "keys do not match",
        "missing",
        "e.g.",
    )
    sd = torch.load(sample("mlp")["checkpoint"], weights_only=True)
    sd["2.weight"] = torch.zeros(10, 33)
    torch.save(sd, tmp_path / "bad.pt")
    one_line_error(
        cli("sweep", "--sample", "mlp", "--checkpoint", tmp_path / "bad.pt", *SMALL, "-o", out),
        "shape mismatch for 2.weight",
    )
    assert not out.exists()


def test_data_that_does_not_fit(cli, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 63), np.float32), y=np.zeros(10, np.int64))
    out = tmp_path / "o.h5"
    one_line_error(
        cli("sweep", "--sample", "mlp", "--data", tmp_path / "d.npz", *SMALL, "-o", out),
        "--data",
        "cannot take inputs x of shape (10, 63)",
    )
    np.savez(tmp_path / "d2.npz", x=np.zeros((10, 64), np.float32), y=np.full(10, 42, np.int64))
    one_line_error(
        cli("sweep", "--sample", "mlp", "--data", tmp_path / "d2.npz", *SMALL, "-o", out),
        "--data",
        "is not a class of the model's 10 outputs",
    )
    np.savez(tmp_path / "d3.npz", x=np.zeros((10, 64), np.float32), y=np.zeros((10, 3), np.float32))
    one_line_error(
        cli("sweep", "--sample", "mlp", "--data", tmp_path / "d3.npz", *SMALL, "-o", out),
        "--data",
        "loss cannot compare",
    )
    assert not out.exists()


def test_pickled_checkpoint_refused_then_allowed(cli, tmp_path):
    from landscape.sample_models.models import mlp

    m = mlp()
    m.load_state_dict(torch.load(sample("mlp")["checkpoint"], weights_only=True))
    torch.save(m, tmp_path / "whole.pt")
    out = tmp_path / "o.h5"
    one_line_error(
        cli("sweep", "--sample", "mlp", "--checkpoint", tmp_path / "whole.pt", *SMALL, "-o", out), "--unsafe-pickle"
    )
    assert not out.exists()
    r = cli("sweep", "--sample", "mlp", "--checkpoint", tmp_path / "whole.pt", "--unsafe-pickle", *SMALL, "-o", out)
    assert r.code == 0, r.err


def test_nonfinite_loss_stored_as_nan_and_run_goes_on(cli, tmp_path):
    (tmp_path / "loss.py").write_text(
        "import torch.nn.functional as F\n"
        "def loss(out, y):\n    l = F.cross_entropy(out, y)\n    return l * float('nan') if l > 1.0 else l\n"
    )
    out = tmp_path / "o.h5"
    r = cli(
        "sweep",
        "--sample",
        "mlp",
        "--loss",
        f"{tmp_path / 'loss.py'}:loss",
        "--x",
        "-1:1:5",
        "--samples",
        "100",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    s = read_sweep(out)
    assert np.isnan(s["loss"][0]) and np.isnan(s["loss"][-1]) and np.isfinite(s["loss"][2])
    assert s["done"].all()
    assert f"NaN or infinite at {int(np.isnan(s['loss']).sum())} grid point(s)" in r.err


def test_not_our_file(cli, tmp_path):
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.zeros(3)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 10)
    for name, needle in (("foreign.h5", "not a landscape results file"), ("junk.h5", "not a readable HDF5 file")):
        one_line_error(cli("info", tmp_path / name), name, needle)
        one_line_error(cli("plot", tmp_path / name, "-o", tmp_path / "f.png"), name)
        one_line_error(cli("sweep", "--sample", "mlp", *SMALL, "--resume", "-o", tmp_path / name), name)
    assert not (tmp_path / "f.png").exists()


def test_resume_with_other_settings_refused(cli, tmp_path):
    out = tmp_path / "o.h5"
    assert cli("sweep", "--sample", "mlp", *SMALL, "-o", out).code == 0
    one_line_error(
        cli("sweep", "--sample", "mlp", "--x", "-1:1:5", "--samples", "64", "--resume", "-o", out),
        "other settings",
        "coords",
    )
    one_line_error(
        cli("sweep", "--sample", "mlp", *SMALL, "--seed", "1", "--resume", "-o", out), "other settings", "seed"
    )
    one_line_error(cli("sweep", "--sample", "mlp", *SMALL, "-o", out), "exists", "--resume", "--force")
    assert cli("sweep", "--sample", "mlp", *SMALL, "--resume", "-o", out).code == 0  # nothing left: a no-op


def test_a_resume_mismatch_names_the_setting_and_both_values_shortened(cli, tmp_path):
    """A 121-point grid against a 61-point one is named by its size and ends, not 182 numbers; a
    changed file by the start of both hashes; a 2D run on a 1D file by the dimensions."""
    out = tmp_path / "o.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:61", "-o", out).code == 0
    res = cli("sweep", "--sample", "linreg", "--x", "-2:2:121", "--resume", "-o", out)
    (line,) = [line for line in res.err.splitlines() if line.startswith("error:")]
    assert "(coords.x: file has 61 values from -1 to 1, this run has 121 values from -2 to 2)" in line, line
    assert len(line) < 200
    res = cli("sweep", "--sample", "linreg", "--x", "-1:1:61", "--y", "-1:1:3", "--resume", "-o", out)
    assert "the file's sweep is 1D, this run's 2D" in res.err and res.code == 2
    from landscape.io.samples import sample

    state = torch.load(sample("linreg")["checkpoint"], weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, tmp_path / "other.pt")
    res = cli(
        "sweep", "--sample", "linreg", "--checkpoint", tmp_path / "other.pt", "--x", "-1:1:61", "--resume", "-o", out
    )
    assert "(the checkpoint changed: sha256 " in res.err and res.code == 2, res.err


def test_bad_options(cli, tmp_path):
    out = tmp_path / "o.h5"
    one_line_error(cli("sweep", "--sample", "mlp", "--x", "1:2", "-o", out), "--x", "MIN:MAX:POINTS")
    one_line_error(cli("sweep", "--sample", "mlp", *SMALL, "--norm", "weird", "-o", out), "--norm")
    one_line_error(cli("sweep", "--sample", "mlp", *SMALL, "--strategy", "fast", "-o", out), "--strategy")
    one_line_error(cli("sweep", "--sample", "nope", "-o", out), "--sample", "mlp")
    # a strategy that cannot run this model (linear regression has nothing to fuse): no file left behind
    one_line_error(cli("sweep", "--sample", "linreg", *SMALL, "--strategy", "fused", "-o", out), "--strategy 'fused'")
    assert not out.exists()


def test_user_text_printed_as_it_is(cli, tmp_path):
    """Paths and option values reach the terminal unchanged: no rich markup ([/x] once crashed the
    message) and no emoji codes (':b:' in '--x a:b:3' once printed as an emoji)."""
    one_line_error(cli("sweep", "--sample", "mlp", "--x", "a:b:3", "-o", tmp_path / "o.h5"), "--x 'a:b:3'")
    odd = tmp_path / "r[/x]" / "[bold]:b:.h5"
    r = cli("sweep", "--sample", "linreg", *SMALL, "-o", odd)
    assert r.code == 0, r.err
    assert f"wrote {odd}" in r.err
    r = cli("info", odd)
    assert r.code == 0 and "[bold]:b:.h5" in r.out.replace("\n", "")


def test_config_file_and_flags_override(cli, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[sweep]\nsample = "linreg"\nx = "-1:1:3"\ny = "-1:1:2"\nseed = 4\ndtype = "float64"\n')
    out = tmp_path / "o.h5"
    r = cli("sweep", "--config", cfg, "--y", "-1:1:4", "-o", out)
    assert r.code == 0, r.err
    s = read_sweep(out)
    assert s["loss"].shape == (3, 4)
    assert s["attrs"]["seed"] == 4 and s["attrs"]["sample"] == "linreg" and s["attrs"]["dtype"] == "float64"
    cfg.write_text('[sweep]\nsampel = "mlp"\n')
    one_line_error(cli("sweep", "--config", cfg, "-o", tmp_path / "p.h5"), "--config", "sampel")


def test_info_json_and_samples(cli, tmp_path):
    out = tmp_path / "o.h5"
    assert cli("sweep", "--sample", "mlp", *SMALL, "-o", out).code == 0
    import json

    r = cli("info", out, "--json")
    desc = json.loads(r.out)
    assert desc["attrs"]["format"] == "landscape-results" and desc["numbers"]["points_done"] == 3
    assert desc["datasets"]["sweep/loss"]["shape"] == [3]
    r = cli("samples")
    assert all(n in r.out for n in ("mlp", "cnn", "transformer", "linreg"))


def _done(path: Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["sweep/done"][()].sum())
    except (OSError, KeyError):
        return 0


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Kill a sweep with SIGKILL mid-run, resume it, and compare with an uninterrupted run."""
    args = [
        "sweep",
        "--sample",
        "cnn",
        "--x",
        "-1:1:15",
        "--y",
        "-1:1:15",
        "--dtype",
        "float64",
        "--strategy",
        "loop",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape", *args, "-o", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _done(killed) == 0:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_sweep(killed)
    assert not partial["attrs"]["complete"] and 0 < partial["done"].sum() < partial["done"].size
    assert np.isnan(partial["loss"][~partial["done"]]).all()
    subprocess.run(
        [sys.executable, "-m", "landscape", *args[:-4], "--resume", "-o", str(killed)],
        env=env,
        check=True,
        capture_output=True,
    )
    whole = tmp_path / "whole.h5"
    subprocess.run(
        [sys.executable, "-m", "landscape", *args, "-o", str(whole)], env=env, check=True, capture_output=True
    )
    a, b = read_sweep(killed), read_sweep(whole)
    assert a["attrs"]["complete"] and a["done"].all()
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-12)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], rtol=1e-12)


def _interrupt_after_first_line(args: list[str], when=None, sig=signal.SIGINT) -> tuple[int, str]:
    """Run `landscape ARGS`, send Ctrl-C (SIGINT, or `sig`) once it has printed its first line (and `when()` holds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    first = proc.stderr.readline()
    deadline = time.time() + 120
    while when is not None and time.time() < deadline and proc.poll() is None and not when():
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(sig)
    rest = proc.stderr.read()
    return proc.wait(), first + rest


def test_ctrl_c_says_what_was_kept(tmp_path):
    """Ctrl-C: exit status 130 and one line; a sweep says how many points it kept and how to resume."""
    path = tmp_path / "s.h5"
    args = [
        "sweep",
        "--sample",
        "cnn",
        "--x",
        "-1:1:15",
        "--y",
        "-1:1:15",
        "--dtype",
        "float64",
        "--strategy",
        "loop",
        "--save-every",
        "0.05",
        "--device",
        "cpu",
        "-o",
        str(path),
    ]
    rc, text = _interrupt_after_first_line(args, when=lambda: _done(path) > 0)
    done = _done(path)
    assert rc == 130 and "Traceback" not in text
    assert f"interrupted: {done} of 225 points are in {path}; run the same command with --resume" in text
    assert not read_sweep(path)["attrs"]["complete"]
    rc, text = _interrupt_after_first_line(
        ["hessian", "--sample", "cnn", "--density", "--steps", "300", "--device", "cpu", "-o", str(tmp_path / "c.h5")]
    )
    assert rc == 130 and "Traceback" not in text and "interrupted:" in text
    assert not (tmp_path / "c.h5").exists()


def test_sigterm_is_a_ctrl_c_with_exit_143(tmp_path):
    """SLURM preemption sends SIGTERM: the sweep says what it kept, exits 143, and --resume finishes it."""
    path = tmp_path / "s.h5"
    args = ["sweep", "--sample", "cnn", "--x", "-1:1:15", "--y", "-1:1:15", "--dtype", "float64"]
    args += ["--strategy", "loop", "--save-every", "0.05", "--device", "cpu", "-o", str(path)]
    rc, text = _interrupt_after_first_line(args, when=lambda: _done(path) > 0, sig=signal.SIGTERM)
    done = _done(path)
    assert rc == 143 and "Traceback" not in text, text
    assert f"interrupted: {done} of 225 points are in {path}; run the same command with --resume" in text
    res = subprocess.run(
        [sys.executable, "-m", "landscape", *args, "--resume"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and read_sweep(path)["attrs"]["complete"], res.stderr


def test_cli_py_from_a_checkout():
    """`python cli.py --help` works from the checkout without installing the console script."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "cli.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sweep" in proc.stdout and "hessian" in proc.stdout


@pytest.mark.parametrize("code, status, err", [(None, 0, ""), (3, 3, ""), ("no model", 1, "no model\n")])
def test_exit_without_teardown_runs_exit_handlers_and_flushes(code, status, err):
    """`host.exit_now` (the CLI's exit) skips the interpreter's teardown but keeps what sys.exit does: the
    exit handlers run, buffered output comes out in order, and the status is sys.exit's."""
    script = (
        "import atexit, sys\n"
        "from landscape.host import exit_now\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "print('buffered', end=' ')\n"
        f"exit_now({code!r})\n"
        "print('never')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (status, "buffered handler ran\n", err)
