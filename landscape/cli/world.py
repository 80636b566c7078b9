"""torchrun for the commands that run under it (sweep, hessian): join the process group, share a
failing rank's error with the others, leave."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from landscape.cli.options import error_text

if TYPE_CHECKING:
    from landscape.distributed import World


@contextmanager
def joined(device: str, timeout_s: float) -> Iterator[World]:
    """This process's World for the command's body. A rank that fails leaves its error line in the
    store; a rank stopped by torchrun because another failed (SIGTERM, as Ctrl-C) then says which
    rank failed and why, so the cause reaches rank 0's output, not only the failing rank's."""
    from landscape.distributed import PeersLost, close_world, init_world

    world = init_world(device, timeout_s)
    try:
        yield world
    except (KeyboardInterrupt, typer.Exit) as exc:
        if isinstance(exc, typer.Exit) and exc.exit_code != 130:
            raise
        world.store_gives_up_soon()
        failed = world.peer_failures()
        if failed:
            raise PeersLost("stopped because " + "; ".join(failed)) from None
        raise
    except Exception as exc:
        world.store_gives_up_soon()
        world.post_failure(error_text(exc))
        raise
    close_world(world)


def tell_torchrun(line: str) -> None:
    """Leave the error line in the file torchrun names (TORCHELASTIC_ERROR_FILE, the JSON its `record`
    writes), so its summary of the failed run shows the message instead of 'error_file: <N/A>'."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    info = {"py_callstack": line, "timestamp": str(int(time.time()))}
    try:
        Path(path).write_text(json.dumps({"message": {"message": line, "extraInfo": info}}))
    except OSError:  # the error line was printed anyway
        pass
