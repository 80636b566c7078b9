"""The examples of docs/api.md and the README's "From Python" section run as written, and what they
print is what they say."""

import contextlib
import io
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_blocks(blocks: list[str], where: Path) -> str:
    """Run the blocks in one namespace in `where`; what they printed. The logger's handlers (a block
    may call ls.show_messages) are put back as they were."""
    from landscape.progress import LOGGER

    handlers, level = list(LOGGER.handlers), LOGGER.level
    out = io.StringIO()
    namespace: dict = {"__name__": "__docs__"}
    try:
        with contextlib.chdir(where), contextlib.redirect_stdout(out):
            for block in blocks:
                exec(compile(block, "docs", "exec"), namespace)
    finally:
        LOGGER.handlers[:], LOGGER.level = handlers, level
    return out.getvalue()


def test_api_page_runs_as_one_script(tmp_path):
    import landscape as ls

    blocks = python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) >= 8
    printed = run_blocks(blocks, tmp_path)
    assert printed.splitlines()[1] == "512 451"
    assert "('x', 'y') torch.Size([2, 451])" in printed
    assert "x -> " in printed  # the ArgumentError names the parameter
    for name in ["surface.h5", "curvature.h5", "roughness.h5"]:
        assert (tmp_path / name).is_file()
    assert "surface.h5 SweepResult" in printed and "curvature.h5 CurvatureResult" in printed
    assert isinstance(ls.load(tmp_path / "roughness.h5"), ls.RoughnessResult)


def test_every_exported_function_has_an_example_in_the_api_page():
    import landscape as ls

    text = (ROOT / "docs" / "api.md").read_text()
    code = "\n".join(python_blocks((ROOT / "docs" / "api.md").read_text()))
    assert set(ls.__all__) - {"__version__"} == set(ls._WHERE)  # every export loads, and is listed
    for name in ls.__all__:
        assert getattr(ls, name) is not None
        if name[0].islower():
            assert f"ls.{name}(" in code, f"docs/api.md has no example calling ls.{name}"
        assert name in text, f"docs/api.md does not mention {name}"


@pytest.mark.parametrize("doc", ["README.md"])
def test_readme_python_section_runs(doc, tmp_path):
    text = (ROOT / doc).read_text()
    section = text[text.index("## From Python") :]
    section = section[: section.index("\n## ", 3)]
    blocks = python_blocks(section)
    assert blocks
    run_blocks(blocks, tmp_path)
