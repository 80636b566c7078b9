"""From what the user named (files, specs or a bundled sample) to a ready Problem plus its provenance."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from landscape.data import Columns
from landscape.errors import LandscapeError
from landscape.io.checkpoint import Checkpoint, fit_state_dict, read_checkpoint
from landscape.io.data import read_data
from landscape.io.loss import resolve_loss
from landscape.io.model import build_model, is_model_dir
from landscape.io.samples import sample as find_sample
from landscape.io.spec import sha256_file, split_call
from landscape.problem import Problem, Say, load_weights, resolve_device, resolve_dtype


@dataclass(frozen=True)
class LoadSpec:
    """The options every command shares to name a model, its weights, data and loss."""

    model: str | None = None
    checkpoint: str | None = None
    data: str | None = None
    loss: str | None = None
    sample: str | None = None
    samples: int | None = None
    seed: int = 0
    batch_size: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    unsafe_pickle: bool = False
    checkpoint_key: str | None = None  # which dict of the checkpoint holds the weights (e.g. state_dict_ema)
    prefix: str | None = None  # the prefix before the model's own key names (e.g. net.)
    params: str = "trainable"  # trainable, all, or a regular expression over parameter names
    input_key: str | None = None  # dict data: the input key(s), comma-separated (default: all but the targets)
    target_key: str | None = None  # dict data: the targets' key (default: labels, label, y, targets, target)
    stream: bool | None = None  # a Dataset/DataLoader streamed (True), collected (False), or by its size (None)

    def resolved(self) -> LoadSpec:
        """Fill model/checkpoint/data/loss from --sample; check that the three are named."""
        spec = self
        if spec.sample:
            s = find_sample(spec.sample)
            spec = LoadSpec(
                **{
                    **asdict(spec),
                    "model": spec.model or s["model"],
                    "checkpoint": spec.checkpoint or s["checkpoint"],
                    "data": spec.data or s["data"],
                    "loss": spec.loss or s["loss"],
                }
            )
        if (
            not spec.model and spec.checkpoint and is_model_dir(spec.checkpoint)
        ):  # a Hugging Face directory builds itself
            spec = replace(spec, model=spec.checkpoint)
        missing = [f"--{k}" for k in ("model", "checkpoint", "data") if not getattr(spec, k)]
        if missing:
            raise LandscapeError(f"missing {', '.join(missing)} (or use --sample NAME; `landscape samples` lists them)")
        return spec


LOAD_OPTION_DEFAULTS = {
    "checkpoint_key": None,
    "prefix": None,
    "params": "trainable",
    "input_key": None,
    "target_key": None,
}


def load_problem(spec: LoadSpec, say: Say = lambda msg: None) -> tuple[Problem, dict[str, Any]]:
    """Build the model, read and fit the checkpoint, load data and loss; return the problem and provenance."""
    spec = spec.resolved()
    assert spec.model and spec.checkpoint and spec.data
    device, dtype = resolve_device(spec.device), resolve_dtype(spec.dtype)
    if is_model_dir(spec.model) and Path(spec.model).resolve() == Path(spec.checkpoint).resolve():
        model = build_model(spec.model, say, weights=True)  # built and loaded once, by the library's own loader
        checkpoint = Checkpoint(spec.checkpoint, {"": model.state_dict()})
    else:
        checkpoint = read_checkpoint(spec.checkpoint, spec.unsafe_pickle)
        model = build_model(spec.model, say)
    state = fit_state_dict(checkpoint, model, spec.checkpoint, say, key=spec.checkpoint_key, prefix=spec.prefix)
    input_keys = tuple(k.strip() for k in spec.input_key.split(",") if k.strip()) if spec.input_key else None
    columns = Columns(input_keys, spec.target_key, targets_from_inputs=spec.loss == "next-token")
    data = read_data(spec.data, spec.unsafe_pickle, columns)
    load_weights(model, state)
    problem = Problem(
        model, data, resolve_loss(spec.loss) if spec.loss else None, device=device, dtype=dtype,
        batch_size=spec.batch_size, columns=columns, samples=spec.samples, seed=spec.seed, stream=spec.stream,
        params=spec.params, where=f"--data {spec.data}", say=say,
    )  # fmt: skip
    loss_name = problem.loss_name
    data_path = Path(spec.data)
    provenance = {
        "model": spec.model,
        "checkpoint": str(spec.checkpoint),
        "checkpoint_sha256": sha256_file(spec.checkpoint),
        "data": str(spec.data),
        "data_sha256": sha256_file(data_path) if data_path.is_file() else "",
        "samples": problem.n,
        "loss": loss_name,
        "sample": spec.sample or "",
        "device": str(device),
        "dtype": spec.dtype,
        "seed": spec.seed,
        "torch_version": str(torch.__version__),
        "parameters": problem.layout.size,
    }
    code = code_sha256(spec)
    if code:  # the user's own code fixes the numbers too: a resume with an edited model file is refused
        provenance["code_sha256"] = json.dumps(code, sort_keys=True)
    chosen = {k: v for k, v in asdict(spec).items() if k in LOAD_OPTION_DEFAULTS and v != LOAD_OPTION_DEFAULTS[k]}
    if chosen:  # how the files were read, where it is not the default: it fixes the numbers as much as the files do
        provenance["load_options"] = json.dumps(chosen, sort_keys=True)
    return problem.with_provenance(provenance), provenance


def load_data_set(problem: Problem, spec: LoadSpec, name: str, path: str, say: Say = lambda msg: None) -> Problem:
    """`problem` on another data file (`--eval-data NAME=PATH`), read as --data is (the same columns,
    --samples and seed)."""
    spec = spec.resolved()
    input_keys = tuple(k.strip() for k in spec.input_key.split(",") if k.strip()) if spec.input_key else None
    columns = Columns(input_keys, spec.target_key, targets_from_inputs=spec.loss == "next-token")
    data = read_data(path, spec.unsafe_pickle, columns)
    return problem.with_data(
        data, columns=columns, samples=spec.samples, seed=spec.seed, stream=spec.stream, where=f"--eval-data {name}={path}",
        say=say,
    )  # fmt: skip


def code_sha256(spec: LoadSpec) -> dict[str, str]:
    """sha256 of each source file a `file.py:fn` option (--model, --data, --loss) imports, by option."""
    out = {}
    for option, value in (("--model", spec.model), ("--data", spec.data), ("--loss", spec.loss)):
        if isinstance(value, str) and ":" in value:
            source = Path(split_call(value, option)[0].rsplit(":", 1)[0])
            if source.suffix == ".py" and source.is_file():
                out[f"{option} {source}"] = sha256_file(source)
    return out


def load_other_state(
    path: str, problem: Problem, spec: LoadSpec, say: Say = lambda msg: None
) -> dict[str, torch.Tensor]:
    """A second checkpoint of the same model, read as the first one was (--checkpoint-key, --prefix)."""
    checkpoint = read_checkpoint(path, spec.unsafe_pickle)
    return fit_state_dict(checkpoint, problem.model, path, say, key=spec.checkpoint_key, prefix=spec.prefix)
