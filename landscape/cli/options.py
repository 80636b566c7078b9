"""Options shared by every command that loads a model, the --config file, progress bars and messages."""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from landscape.errors import ArgumentError, LandscapeError, one_line
from landscape.names import STORE_DTYPES

if TYPE_CHECKING:
    from landscape.io.load import LoadSpec
    from landscape.problem import Problem


# markup and emoji codes off: paths and messages hold "[...]" and ":b:" that must print as they are
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
out = Console(highlight=False, markup=False, emoji=False)

LOAD = "Model, weights, data"
RUN = "Running"


def one_of(flag: str, values: tuple[str, ...]) -> Callable[[str], str]:
    """An option callback: a value outside `values` is a one-line error while the line is parsed,
    before a model is loaded."""

    def check(value: str) -> str:
        if value is not None and value not in values:  # None: not given (the command picks the default)
            raise LandscapeError(f"{flag} {value!r}: expected one of {', '.join(values)}")
        return value

    return check


COMMAND_LINE_ONLY = ("unsafe_pickle",)  # options a config file may not turn on


def load_config(ctx: typer.Context, param: Any, value: Path | None) -> Path | None:
    """Eager --config: read a TOML file into the command's defaults, so flags on the line still win."""
    if value is None:
        return value
    if not value.is_file():
        raise LandscapeError(f"--config: file not found: {value}")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
    try:
        table = tomllib.loads(value.read_text())
    except Exception as exc:
        raise LandscapeError(f"--config {value}: not valid TOML ({exc})") from exc
    name = ctx.info_name or ""
    commands = set(getattr(ctx.find_root().command, "commands", {}) or {name})
    for key, val in table.items():  # a misspelt [sweeps] was ignored without a word
        if isinstance(val, dict) and key not in commands:
            raise LandscapeError(
                f"--config {value}: unknown section [{key}]; sections are named after commands ({', '.join(sorted(commands))})"
            )
    section = table.get(name, table) if isinstance(table.get(name), dict) else table
    known = {p.name for p in ctx.command.params}
    defaults = {}
    for key, val in section.items():
        if isinstance(val, dict) and section is table:
            continue  # another command's section
        k = key.replace("-", "_")
        if k not in known:
            raise LandscapeError(f"--config {value}: unknown option {key!r} for `landscape {name}`")
        if k in COMMAND_LINE_ONLY and val:
            raise LandscapeError(
                f"--config {value}: {key} = {str(val).lower()} is refused: --{k.replace('_', '-')} lets a file run code "
                "when it is read, so only the command line can turn it on"
            )
        defaults[k] = str(val) if isinstance(val, float) else val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


Model = Annotated[
    str | None,
    typer.Option(
        help="Model factory: MODULE:FACTORY or path/to/file.py:FACTORY (imports and runs that file: name only files you trust), with its literal arguments if it takes any, as in MODULE:FACTORY(num_classes=10) (torchvision.models:resnet18, timm:create_model('resnet18', ...)), or a Hugging Face model directory (default: --checkpoint when it is one).",
        rich_help_panel=LOAD,
    ),
]
Checkpoint = Annotated[
    str | None,
    typer.Option(
        help="Weights: .pt/.pth/.ckpt/.bin/.safetensors, or a Hugging Face model directory. The dict of tensors and the key prefix (module., net., _orig_mod., ...) are found by the model's own names.",
        rich_help_panel=LOAD,
    ),
]
Data = Annotated[
    str | None,
    typer.Option(
        help="Data: a .pt/.npz/.h5 file holding x and y (or named columns: input_ids, attention_mask, labels, ...), or file.py:fn (or fn(split='val'), literal arguments) returning tensors, a Dataset or a DataLoader (of pairs or of dicts; the file is imported and run).",
        rich_help_panel=LOAD,
    ),
]
Loss = Annotated[
    str | None,
    typer.Option(
        help="cross-entropy (default for integer targets; logits [N, C, ...] or [B, T, V]; targets -100 ignored), next-token (causal language models: logits [B, T, V] predict the next of the tokens [B, T]), mse (default otherwise), or file.py:fn(output, target) -> mean loss (file.py:fn(gamma=2.0) binds literal arguments first; the file is imported and run). The built-ins read .logits, ['logits'] or a tuple's first element of the output; your function gets the output as it is.",
        rich_help_panel=LOAD,
    ),
]
Sample = Annotated[
    str | None,
    typer.Option(
        help="A bundled sample instead of model/checkpoint/data (see `landscape samples`).", rich_help_panel=LOAD
    ),
]
Samples = Annotated[
    int | None, typer.Option(help="Use a fixed, seeded subset of N data points (default: all).", rich_help_panel=LOAD)
]


def output_file(path: Path) -> Path:
    """An --output that can be a file: not a folder, not a device or pipe (`-o /dev/null --force` as
    root replaced the device node), and no file where its folder should be."""
    if path.is_dir():
        raise LandscapeError(f"--output {path}: is a folder; name a file (in it)")
    if path.exists() and not path.is_file():
        raise LandscapeError(f"--output {path}: not a regular file (a device, a pipe or a socket); name a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LandscapeError(f"--output {path}: {parent} is a file, not a folder")
            break
    from landscape.io.atomic import written_path

    return written_path(path)  # a symbolic link is written through


NOT_RESULTS = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".html", ".htm", ".csv", ".vtk", ".vts", ".vtu", ".json")


def results_file(path: Path) -> Path:
    """An --output for a results file: `output_file`, and not named as a figure or a table (`sweep -o
    a.png` wrote HDF5 under a png name, which no viewer opens)."""
    if path.suffix.lower() in NOT_RESULTS:
        raise LandscapeError(
            f"--output {path}: a results file is HDF5; name it .h5 (a figure goes to --figure {path.name})"
        )
    return output_file(path)


def stage_label(what: str, stage: str) -> str:
    """A progress bar's label: "choosing strategy" while the probe times them (the bar would sit at 0), then `what`."""
    return stage if stage == "choosing strategy" else what


def in_range(
    option: str, low: float | None = None, high: float | None = None, *, positive: bool = False
) -> Callable[[Any], Any]:
    """An option callback that refuses NaN, infinities and values outside [low, high] (or not above
    0, `positive`) with one line naming the option and the allowed range; None passes."""
    if positive:
        allowed = "a positive number" + (f" up to {high:g}" if high is not None else "")
    elif low is not None and high is not None:
        allowed = f"from {low:g} to {high:g}"
    else:
        allowed = "a finite number"

    def check(value: Any) -> Any:
        if value is None:
            return value
        inside = (low is None or value >= low) and (high is None or value <= high) and (not positive or value > 0)
        if not (math.isfinite(value) and inside):
            raise LandscapeError(f"{option} {value}: must be {allowed}")
        return value

    return check


SEED_LIMIT = 2**63 - 16  # a seed is stored as a 64-bit integer, and the curvature runs use seed + 1 and + 2


def _seed_in_range(seed: int) -> int:
    if not -SEED_LIMIT <= seed <= SEED_LIMIT:
        raise LandscapeError(f"--seed {seed}: too large; a seed must lie within +-{SEED_LIMIT:,} (64-bit)")
    return seed


Seed = Annotated[
    int,
    typer.Option(
        help="Seed of random directions and of the --samples subset.", rich_help_panel=RUN, callback=_seed_in_range
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help="Data points per forward pass (default: tuned by timing, at most all of them, 4096 on CPU, 65536 on GPU).",
        rich_help_panel=RUN,
    ),
]
DistTimeout = Annotated[
    float,
    typer.Option(
        "--dist-timeout",
        help="Under torchrun: seconds a process waits for the others (to start, and at each exchange) before it "
        "stops with one line saying which rank failed or that one stalled.",
        rich_help_panel=RUN,
        callback=in_range("--dist-timeout", high=7 * 86400, positive=True),
    ),
]
SaveEvery = Annotated[
    float,
    typer.Option(
        "--save-every",
        help="Seconds of work between writes of the points done so far (a killed run loses at most about this "
        "much; shorter means more writes).",
        rich_help_panel=RUN,
        callback=in_range("--save-every", high=86400, positive=True),
    ),
]
Device = Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda or cuda:N.", rich_help_panel=RUN)]
Dtype = Annotated[
    str,
    typer.Option(
        help="float32, float64 (for checks against exact values) or bfloat16 (sweeps on GPUs: the model runs in bfloat16, weights are formed in float32).",
        rich_help_panel=RUN,
    ),
]
StoreDtype = Annotated[
    str | None,
    typer.Option(
        help="How P-sized vectors (directions, eigenvectors) are stored: float32 (the default; float64 for "
        "--dtype float64 runs), float64, or bfloat16 (half the file; a sweep then evaluates the directions as "
        "stored, so --resume gives the same numbers).",
        rich_help_panel=RUN,
        callback=one_of("--store-dtype", STORE_DTYPES),
    ),
]
UnsafePickle = Annotated[
    bool,
    typer.Option(
        "--unsafe-pickle",
        help="Allow torch.load to unpickle arbitrary objects. Only for files you trust: unpickling can run code. Only on the command line (a --config file cannot turn it on).",
        rich_help_panel=LOAD,
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(
        help="TOML file with any of these options (a table named after the command, e.g. \\[sweep], or top-level keys); flags given on the line win.",
        callback=load_config,
        is_eager=True,
    ),
]


def load_spec(**kwargs: Any) -> LoadSpec:
    from landscape.io.load import LoadSpec

    return LoadSpec(**kwargs)


def load_problem(spec: LoadSpec, tell: Callable[[str], None]) -> tuple[Problem, dict[str, Any]]:
    """`landscape.io.load.load_problem`, then the process's kept freed memory fitted to the model's size."""
    from landscape.host import keep_freed_memory, kept_bytes
    from landscape.io.load import load_problem as load

    problem, prov = load(spec, tell)
    keep_freed_memory(kept_bytes(problem.theta.numel() * problem.theta.element_size()))
    return problem, prov


def _load_option(name: str, help: str, default: Any = None, kind: Any = str | None) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, typer.Option(help=help, rich_help_panel=LOAD)],
    )


MODEL_OPTIONS = (  # how to read a real model's files: added to every command that loads one by `model_options`
    _load_option(
        "checkpoint_key",
        "Which dict of the checkpoint holds the weights (e.g. state_dict_ema), when several fit the model.",
    ),
    _load_option(
        "prefix", "The prefix in front of the model's own key names (e.g. net. or ema.module.), when several fit."
    ),
    _load_option(
        "params",
        "The parameters to perturb and differentiate: trainable (requires_grad, default), all, or a regular "
        "expression over names (e.g. 'layer4|fc').",
        default="trainable",
        kind=str,
    ),
    _load_option(
        "input_key",
        "Data as dicts: the key(s) the model takes, comma-separated (default: all but the targets; one key is "
        "passed positionally, several as keyword arguments).",
    ),
    _load_option(
        "target_key", "Data as dicts: the targets' key (default: the first of labels, label, y, targets, target)."
    ),
    inspect.Parameter(
        "stream",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            bool | None,
            typer.Option(
                "--stream/--no-stream",
                help="A --data Dataset or DataLoader: read it batch by batch on every pass (--stream), or collect "
                "it into memory once (--no-stream). Default: collected when its tensors fit a quarter of the free "
                "memory, streamed otherwise; the output says which.",
                show_default=False,
                rich_help_panel=LOAD,
            ),
        ],
    ),
)


INPUTS = (
    "checkpoint",
    "data",
    "model",
    "loss",
    "to",
    "axes_from",
    "train_data",
    "eval_data",
    "checkpoints",
    "path",
    "paths",
    "config",
)
OUTPUTS = ("output", "figure")


def refuse_inputs_as_outputs(options: dict[str, Any]) -> None:
    """No --output (or --figure) may be one of the command's inputs: a checkpoint, the data, a
    results file to draw, the file of a `file.py:fn` option. Writing there destroyed the input."""
    inputs: list[tuple[str, Path]] = []
    for name in INPUTS:
        values = options.get(name)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value is None:
                continue
            text = str(value)
            for candidate in {text, text.rsplit(":", 1)[0], text.split("=", 1)[-1]}:
                if Path(candidate).is_file():
                    inputs.append((name, Path(candidate)))
    if options.get("sample"):  # the bundled sample's own files (its checkpoints, its data)
        from landscape.io.samples import registry

        entry = registry().get(str(options["sample"]), {})
        for value in [entry.get("checkpoint"), entry.get("data"), *entry.get("checkpoints", [])]:
            if value:
                inputs.append(("sample", Path(value)))
    for name in OUTPUTS:
        out = options.get(name)
        if out is None or not Path(out).is_file():
            continue
        for which, path in inputs:
            if Path(out).resolve() == path.resolve() or os.path.samefile(out, path):  # a hard link too
                flag = "--" + name.replace("_", "-")
                if which == "sample":
                    given = f"a file of --sample {options['sample']}"
                elif which in ("path", "paths", "checkpoints"):
                    given = "an input of this command"
                else:
                    given = f"--{which.replace('_', '-')} of this command"
                raise LandscapeError(f"{flag} {out}: is {given}; write it elsewhere")


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the MODEL_OPTIONS; it receives them as one dict `model_options` of LoadSpec fields."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)  # the annotations as objects (typer reads them)
    visible = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in signature.parameters.values()
        if p.name != "model_options"
    ]
    names = [p.name for p in MODEL_OPTIONS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refuse_inputs_as_outputs(kwargs)
        return command(*args, model_options={n: kwargs.pop(n) for n in names}, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*visible, *MODEL_OPTIONS])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*visible, *MODEL_OPTIONS]}
    return wrapper


def tagged(tag: str, style: str, msg: str, sep: str = " ") -> None:
    """One line on stderr: a coloured tag, then the message as it is."""
    err.print(Text.assemble((tag, style), sep, msg))


def error_text(exc: BaseException, output: str = "") -> str:
    """An error as the one line the CLI prints: the tool's own as it is (under its option); for an
    OSError the file (the OS's, else the command's output when the disk is at fault) and the OS's
    reason; for anything else its type and its message's first line."""
    import errno

    from landscape.io.atomic import os_reason

    if isinstance(exc, ArgumentError):
        return exc.option_message()
    if isinstance(exc, LandscapeError):
        return str(exc)
    if isinstance(exc, OSError):
        disk = exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)
        name = exc.filename or (f"writing {output}" if output and disk else "")
        return f"{name}: {os_reason(exc)}" if name else f"{type(exc).__name__}: {os_reason(exc)}"
    return one_line(exc)


def rank_prefix() -> str:
    """'rank 1 of 4: ' in a process torchrun started (whose lines mix with the others'), else ''."""
    size = os.environ.get("WORLD_SIZE", "1")
    return f"rank {os.environ.get('RANK', '?')} of {size}: " if size.isdigit() and int(size) > 1 else ""


def say(msg: str) -> None:
    tagged("landscape:", "dim", msg)


def warn(msg: str) -> None:
    tagged("warning:", "yellow", msg)


def wrote(path: object) -> None:
    tagged("wrote", "green", str(path))


class RateColumn(ProgressColumn):
    """Units (points, products) per second."""

    def __init__(self, unit: str = "pts") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed and task.finished and task.elapsed:  # a short task ends before rich has a rate
            speed = task.completed / task.elapsed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


def progress(disable: bool = False) -> Progress:
    """A bar with points done, points per second and the time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=disable,
    )


def activity(unit: str, disable: bool = False) -> Progress:
    """A spinner for work whose length is not known up front (Lanczos stops when it converges): what
    is running, how many units are done, their rate and the time so far."""
    return Progress(
        SpinnerColumn(finished_text="-"),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:.0f} " + unit),
        RateColumn(unit),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=disable,
    )


def interrupted(detail: str) -> None:
    """The line Ctrl-C leaves (typer alone would exit 130 without a word); `detail` follows the tag."""
    tagged("interrupted", "red", detail, sep="")


def points_kept(done: int, total: int, path: object) -> str:
    """What a stopped resumable run kept, and how to finish it."""
    return f"{done} of {total} points are in {path}; run the same command with --resume to finish it"


def command_line() -> str:
    return " ".join(["landscape", *sys.argv[1:]])


def parse_range(text: str, option: str) -> tuple[float, float, int]:
    """'a:b:n' -> (a, b, n): n evenly spaced points from a to b (inclusive), as in Li et al.'s tool."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise LandscapeError(f"{option} {text!r}: expected MIN:MAX:POINTS, e.g. -1:1:51") from None
    if n < 1 or not (math.isfinite(a) and math.isfinite(b)):
        raise LandscapeError(f"{option} {text!r}: need finite bounds and at least one point")
    return a, b, n
