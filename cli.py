"""Run the CLI from a checkout: `python cli.py --help`.

With any Python: when the dependencies are missing here but the checkout's `.venv` (made by
`make demo` or `make test`) has them, the command runs again under that interpreter.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

try:
    from landscape.cli import run
except ImportError as exc:
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    sys.exit(f"cli.py: {exc}; install first with `make test` (or `pip install -e .`)")

if __name__ == "__main__":
    run()
