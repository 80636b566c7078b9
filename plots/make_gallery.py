"""Render the gallery in plots/ from the bundled sample models: `make gallery` (about a minute on 2 CPU cores).

Runs a few modest sweeps with the `landscape` CLI (in this process, so torch is imported once),
then draws every figure from the results files alone, exactly as a user would:

  mlp_contour.png      contour lines, Li et al.'s levels, the checkpoint starred
  mlp_surface.png      3D surface of the same grid
  mlp_accuracy.png     accuracy heatmap of the same grid
  cnn_filled_log.png   filled contours of a BatchNorm CNN, log colour scale (its loss spans 0.03 to 200)
  compare_mlp_cnn.png  both models side by side, one colour scale clipped at --vmax 10
  linreg_log.png       linear regression, log-spaced contour levels (--log)
  transformer_line.png 1D loss (and accuracy) along a random direction
  mlp_path.png         1D line from the final checkpoint to a mid-training one
  transformer_eigenvalues.png top Hessian eigenvalues, whole model and per block (log axis)
  transformer_density.png Hessian spectral density (SLQ), and the blocks' spectra by shape
  report.html          everything, interactive (plotly.js from the CDN, to keep the repository small)

Usage: python plots/make_gallery.py [--out plots] [--keep-results DIR] [--self-contained]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(*args: object) -> None:
    """One `landscape ...` command in this process; stop the gallery on any failure."""
    from landscape.cli import main

    argv = [str(a) for a in args]
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code:
            raise SystemExit(f"gallery: `landscape {' '.join(argv)}` failed with exit status {exc.code}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="folder for the figures (default: plots/)")
    ap.add_argument("--keep-results", type=Path, default=None, help="keep the .h5 results files in this folder")
    ap.add_argument("--self-contained", action="store_true", help="embed plotly.js in report.html (about 5 MB)")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="landscape-gallery-") as tmp:
        res = args.keep_results or Path(tmp)
        res.mkdir(parents=True, exist_ok=True)
        h5 = {
            name: res / f"{name}.h5" for name in ("mlp", "cnn", "linreg", "transformer", "mlp_path", "transformer_curv")
        }

        run("sweep", "--sample", "mlp", "--x", "-1:1:31", "--y", "-1:1:31", "--force", "-o", h5["mlp"])
        run(
            "sweep",
            "--sample",
            "cnn",
            "--x",
            "-1:1:21",
            "--y",
            "-1:1:21",
            "--samples",
            "512",
            "--force",
            "-o",
            h5["cnn"],
        )
        run("sweep", "--sample", "linreg", "--x", "-1:1:25", "--y", "-1:1:25", "--force", "-o", h5["linreg"])
        run(
            "sweep", "--sample", "transformer", "--x", "-1:1:41", "--samples", "512", "--force", "-o", h5["transformer"]
        )
        mid = ROOT / "sample_models" / "mlp" / "ckpt_002.pt"
        run("sweep", "--sample", "mlp", "--to", mid, "--x", "-0.25:1.25:31", "--force", "-o", h5["mlp_path"])
        run(
            "hessian",
            "--sample",
            "transformer",
            "--samples",
            "512",
            "--top-k",
            "5",
            "--density",
            "--per-layer",
            "--force",
            "-o",
            h5["transformer_curv"],
        )

        run("plot", h5["mlp"], "--kind", "contour", "--force", "-o", out / "mlp_contour.png")
        run("plot", h5["mlp"], "--kind", "surface", "--force", "-o", out / "mlp_surface.png")
        run("plot", h5["mlp"], "--kind", "heatmap", "--metric", "accuracy", "--force", "-o", out / "mlp_accuracy.png")
        run("plot", h5["cnn"], "--kind", "filled", "--log", "--force", "-o", out / "cnn_filled_log.png")
        run(
            "compare",
            h5["mlp"],
            h5["cnn"],
            "--kind",
            "filled",
            "--vmax",
            "10",
            "--force",
            "-o",
            out / "compare_mlp_cnn.png",
        )
        run("plot", h5["linreg"], "--kind", "contour", "--log", "--force", "-o", out / "linreg_log.png")
        run("plot", h5["transformer"], "--force", "-o", out / "transformer_line.png")
        run("plot", h5["mlp_path"], "--force", "-o", out / "mlp_path.png")
        run(
            "plot",
            h5["transformer_curv"],
            "--kind",
            "eigenvalues",
            "--force",
            "-o",
            out / "transformer_eigenvalues.png",
        )
        run("plot", h5["transformer_curv"], "--kind", "density", "--force", "-o", out / "transformer_density.png")
        run(
            "report",
            h5["mlp"],
            h5["cnn"],
            h5["transformer"],
            h5["mlp_path"],
            h5["transformer_curv"],
            "--title",
            "landscape gallery: bundled samples",
            "--plotlyjs",
            "inline" if args.self_contained else "cdn",
            "--force",
            "-o",
            out / "report.html",
        )
    print(f"gallery: wrote {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
