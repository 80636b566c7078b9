"""Progress and messages of the library: one place, which the caller chooses.

The library prints nothing by itself: messages go to the `landscape` logger (which has no handler
until `show_messages` adds rich's), and a progress bar shows only when asked (`progress=True`, a
rich bar that works in a terminal and in Jupyter) or goes to the caller's own callback
(`progress=fn(done, total)`; the CLI passes its bar).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOGGER = logging.getLogger("landscape")
LOGGER.addHandler(logging.NullHandler())

Say = Callable[[str], None]
OnProgress = Callable[[int, int | None], None]  # (done, total or None when not known beforehand)
Progress = bool | OnProgress


def say(msg: str) -> None:
    """A message about the run (what was found, chosen, left out): the logger at INFO."""
    LOGGER.info(msg)


def warn(msg: str) -> None:
    """Something the user should know (a fallback, non-finite points): the logger at WARNING."""
    LOGGER.warning(msg)


def show_messages(level: int | str = logging.INFO) -> None:
    """Print the library's messages (rich's handler on the `landscape` logger), e.g. in a notebook."""
    from rich.logging import RichHandler

    if not any(isinstance(h, RichHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(RichHandler(show_time=False, show_path=False, markup=False))
    LOGGER.setLevel(level)


@contextmanager
def progress_to(progress: Progress, label: str, total: int | None = None) -> Iterator[OnProgress]:
    """A callback `(done, total)` for `progress`: nothing (False), a rich bar (True), or the caller's own."""
    if callable(progress):
        yield progress
        return
    if not progress:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import (
        Progress as Bar,
    )

    with Bar(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task(label, total=total)

        def update(done: int, of: int | None) -> None:
            bar.update(task, completed=done, total=of if of is not None else bar.tasks[task].total)

        yield update
