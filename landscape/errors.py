"""The exceptions meant for users: one line each, which the CLI shows as is and exits with their
`exit_code` (2: bad input; 1: a failure during the run)."""

from __future__ import annotations


class LandscapeError(Exception):
    """A user-facing problem (bad file, bad value, a model that cannot run): the message is one line."""

    exit_code = 2


class RunFailure(LandscapeError):
    """The run itself failed (a full disk, a read-only folder): not the input's fault."""

    exit_code = 1


class PointFailure(RunFailure):
    """The model or loss raised while evaluating a point (of a grid, a line, a direction): the message
    says where and why; the points done before it are kept where the run keeps them."""


class ArgumentError(LandscapeError, ValueError):
    """A bad value for the parameter `name` of a library function.

    The message names the parameter as Python spells it (`norm='fliter': expected one of ...`);
    the CLI shows the same error under its option (`--norm 'fliter': ...`) with `option_message`.
    """

    def __init__(self, name: str, value: object, message: str) -> None:
        self.name, self.value, self.message = name, value, message
        shown = "" if value is None else f"={value!r}"
        super().__init__(f"{name}{shown}: {message}")

    def option_message(self, option: str | None = None) -> str:
        """The message under a command-line option (default `--name` with dashes)."""
        flag = option or "--" + self.name.replace("_", "-")
        shown = "" if self.value is None else f" {self.value!r}"
        return f"{flag}{shown}: {self.message}"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
