"""The `landscape` command: a typer app; each sub-command group lives in its own module."""

from __future__ import annotations

import os
import signal
import sys

import typer

from landscape.errors import ArgumentError, LandscapeError, one_line

app = typer.Typer(
    name="landscape",
    help="Loss landscapes, curvature and roughness of a PyTorch checkpoint.\n\n"
    "Start with `landscape samples`, then `landscape sweep --sample mlp -o out.h5` and `landscape plot out.h5 -o fig.png`.\n\n"
    "Errors are one line (exit 2: bad input, 1: the run failed, 130: Ctrl-C); add `--debug` to any command for the traceback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# registers the commands; `--help` lists them in this order: the main jobs first
from landscape.cli import sweep, hessian, analysis, checkpoints, files, plot  # noqa: E402,F401,I001


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (on `argv`, default sys.argv). Errors are one line on stderr: exit status 2 for bad
    input (the tool's own errors), 1 for any other failure during the run (with `--debug`, anywhere on
    the line, or LANDSCAPE_DEBUG=1: the traceback instead), 130 for Ctrl-C."""
    from landscape.cli.options import interrupted, tagged
    from landscape.host import keep_freed_memory

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LANDSCAPE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    keep_freed_memory()  # large temporaries reused instead of page-faulted in on every forward pass
    terminated = stop_on_sigterm()
    try:
        app(args=args, prog_name="landscape")
    except LandscapeError as exc:
        if debug:
            raise
        tagged("error:", "red", exc.option_message() if isinstance(exc, ArgumentError) else str(exc))
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        # typer turns Ctrl-C into a silent exit 130 (Exit raised from the KeyboardInterrupt); say so.
        # `sweep` and `roughness` report their own interrupts (what was kept, how to resume), raising Exit from None.
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            interrupted(": results files are written whole at the end, so none was written")
        if exc.code == 130 and terminated:
            sys.exit(128 + signal.SIGTERM)
        raise
    except Exception as exc:  # not the tool's own: one line naming what failed, the traceback on request
        if debug:
            raise
        tagged("error:", "red", failure_line(exc, output_of(args)) + " (run with --debug for the traceback)")
        sys.exit(1)


def stop_on_sigterm() -> list[int]:
    """SIGTERM (a batch system's preemption, `kill`) stops a run as Ctrl-C does: what was kept and
    how to resume are said, and the exit status is 143; the returned list is not empty once it came."""
    came: list[int] = []

    def stop(signum: int, frame: object) -> None:
        came.append(signum)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (the CLI called from a thread): leave the signal alone
        pass
    return came


def output_of(args: list[str]) -> str:
    """The command's `-o`/`--output` value, if it has one."""
    for i, arg in enumerate(args):
        if arg in ("-o", "--output") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--output="):
            return arg.split("=", 1)[1]
    return ""


def failure_line(exc: BaseException, output: str = "") -> str:
    """An unexpected exception in one line: the file (the OS's, else the command's output when the
    disk is at fault) and the OS's reason for an OSError, else its type and its message's first line."""
    import errno

    from landscape.io.atomic import os_reason

    if isinstance(exc, OSError):
        disk = exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)
        name = exc.filename or (f"writing {output}" if output and disk else "")
        return f"{name}: {os_reason(exc)}" if name else f"{type(exc).__name__}: {os_reason(exc)}"
    return one_line(exc)
