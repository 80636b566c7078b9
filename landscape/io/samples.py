"""The bundled sample models (sample_models/, installed as landscape.sample_models)."""

from __future__ import annotations

from pathlib import Path

from landscape.errors import LandscapeError


def registry() -> dict[str, dict]:
    """Name -> {about, model, checkpoint, checkpoints, data, loss}, with file paths made absolute."""
    import landscape.sample_models as pkg

    root = Path(pkg.__file__).resolve().parent
    out = {}
    for name, entry in pkg.SAMPLES.items():
        e = dict(entry)
        e["checkpoint"] = str(root / e["checkpoint"])
        e["checkpoints"] = [str(root / c) for c in e.get("checkpoints", [])]
        e["data"] = str(root / e["data"])
        out[name] = e
    return out


def sample(name: str) -> dict:
    samples = registry()
    if name not in samples:
        raise LandscapeError(f"--sample {name!r}: no such sample; bundled: {', '.join(samples)}")
    return samples[name]
