"""The `landscape` command: a typer app; each sub-command group lives in its own module."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from landscape.errors import LandscapeError

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
    from landscape.cli.options import error_text, interrupted, rank_prefix, tagged
    from landscape.cli.world import tell_torchrun
    from landscape.host import keep_freed_memory

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LANDSCAPE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    keep_freed_memory()  # large temporaries reused instead of page-faulted in on every forward pass
    sigterm = Sigterm()
    try:
        with output_held(output_of(args)):
            app(args=args, prog_name="landscape")
    except LandscapeError as exc:
        if debug:
            raise
        line = rank_prefix() + error_text(exc)
        tell_torchrun(line)
        tagged("error:", "red", line)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        # typer turns Ctrl-C into a silent exit 130 (Exit raised from the KeyboardInterrupt); say so.
        # `sweep` and `roughness` report their own interrupts (what was kept, how to resume), raising Exit from None.
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            interrupted(": results files are written whole at the end, so none was written")
        if exc.code == 130 and sigterm.came:
            sys.exit(128 + signal.SIGTERM)
        raise
    except Exception as exc:  # not the tool's own: one line naming what failed, the traceback on request
        if debug:
            raise
        line = rank_prefix() + error_text(exc, output_of(args))
        tell_torchrun(line)
        tagged("error:", "red", line + " (run with --debug for the traceback)")
        sys.exit(1)


def run() -> NoReturn:
    """The `landscape` program (the console script, `python -m landscape`, `cli.py`): `main`, then an exit
    without the interpreter's teardown (`host.exit_now`: 0.3-1 s after a command that imported torch)."""
    from landscape.host import exit_now

    code: str | int | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    exit_now(code)


LOCK_GRACE_S = 3.0  # a killed run's process may take a moment to exit and let its lock go


@contextmanager
def output_held(output: str) -> Iterator[None]:
    """Hold `OUTPUT.lock` (an exclusive flock, released by the kernel whatever ends the process) for
    the command's lifetime: a second run on the same -o is refused. Two sweeps at once on one file
    left it saying seed 1 while it held thousands of values from the seed-0 run. Under torchrun only
    rank 0 writes, so only it locks; where no lock file can be made, the command's own write says why."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    if not output or os.environ.get("RANK", "0") != "0" or (os.path.exists(output) and not os.path.isfile(output)):
        yield  # nothing to hold (a device or a folder as -o is refused by the command itself)
        return
    from landscape.io.atomic import written_path

    target = written_path(output)
    lock = target.with_name(target.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # no such folder yet, a read-only one, a file where the folder should be
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise LandscapeError(
                        f"--output {output}: another landscape run (pid {holder}) is writing it; wait for it to "
                        "end or choose another -o"
                    ) from None
                time.sleep(0.05)
        try:  # the holder's pid, for the message above; on a full disk there is no room for it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


class Sigterm:
    """SIGTERM (a batch system's preemption, `kill`) stops a run as Ctrl-C does: what was kept and
    how to resume are said, and the exit status is 143. While an error is on its way out (being
    raised through the stack or reported), a SIGTERM is only noted: torchrun sends one to every
    rank once one has failed, and it cut the error line a rank was about to print and leave in
    torchrun's error file."""

    def __init__(self) -> None:
        self.came = False
        try:
            signal.signal(signal.SIGTERM, self._stop)
        except ValueError:  # not the main thread (the CLI called from a thread): leave the signal alone
            pass

    def _stop(self, signum: int, frame: object) -> None:
        self.came = True
        if sys.exc_info()[1] is None:  # no exception being handled anywhere up the stack
            raise KeyboardInterrupt


def output_of(args: list[str]) -> str:
    """The command's `-o`/`--output` value, if it has one."""
    for i, arg in enumerate(args):
        if arg in ("-o", "--output") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--output="):
            return arg.split("=", 1)[1]
    return ""
