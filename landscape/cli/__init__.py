"""The `landscape` command: a typer app; each sub-command group lives in its own module."""

from __future__ import annotations

import sys

import typer

from landscape.errors import ArgumentError, LandscapeError

app = typer.Typer(
    name="landscape",
    help="Loss landscapes, curvature and roughness of a PyTorch checkpoint.\n\n"
    "Start with `landscape samples`, then `landscape sweep --sample mlp -o out.h5` and `landscape plot out.h5 -o fig.png`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# registers the commands; `--help` lists them in this order: the main jobs first
from landscape.cli import sweep, hessian, analysis, checkpoints, files, plot  # noqa: E402,F401,I001


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (on `argv`, default sys.argv); user errors become one line on stderr and exit status 2."""
    from landscape.cli.options import interrupted, tagged
    from landscape.host import keep_freed_memory

    keep_freed_memory()  # large temporaries reused instead of page-faulted in on every forward pass
    try:
        app(args=argv, prog_name="landscape")
    except LandscapeError as exc:
        tagged("error:", "red", exc.option_message() if isinstance(exc, ArgumentError) else str(exc))
        sys.exit(2)
    except SystemExit as exc:
        # typer turns Ctrl-C into a silent exit 130 (Exit raised from the KeyboardInterrupt); say so.
        # `sweep` and `roughness` report their own interrupts (what was kept, how to resume), raising Exit from None.
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            interrupted(": results files are written whole at the end, so none was written")
        raise
