"""``python -m keyed_dispatch bench [--quick]``: run the benchmark suite.

The suite lives in the source checkout's ``benchmarks/`` folder, beside this
package, not in the package itself (it measures baselines that have no place
in an installed library). From an installed wheel this command explains
where to get it instead.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["find_suite", "load_suite", "main"]


def find_suite(checkout: Path | None = None) -> Path:
    """Return the ``benchmarks/`` folder of the source checkout.

    Args:
        checkout: the checkout's root; by default the folder that holds this
            package (which is the checkout when it runs from source).

    Raises:
        FileNotFoundError: there is no suite there (an installed wheel).
    """
    root = Path(__file__).resolve().parent.parent if checkout is None else checkout
    folder = root / "benchmarks"
    if not (folder / "suite.py").is_file():
        raise FileNotFoundError(
            f"the benchmark suite is not here ({folder} has no suite.py): it ships with the source "
            "checkout, not with the installed package. Clone the repository and run `make bench` "
            "(or `python -m keyed_dispatch bench` from the checkout)."
        )
    return folder


def load_suite(folder: Path) -> ModuleType:
    """Import ``benchmarks.suite`` from ``folder`` (a path from :func:`find_suite`).

    Raises:
        ImportError: another ``benchmarks`` package shadows the checkout's.
    """
    root = str(folder.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module("benchmarks.suite")
    if Path(module.__file__ or "").resolve().parent != folder.resolve():
        raise ImportError(f"imported benchmarks.suite from {module.__file__}, expected it in {folder}")
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """Locate and run the suite; returns its exit status (2 if it is missing)."""
    try:
        folder = find_suite()
    except FileNotFoundError as exc:
        print(f"python -m keyed_dispatch bench: {exc}", file=sys.stderr)
        return 2
    status: int = load_suite(folder).main(list(sys.argv[1:] if argv is None else argv))
    return status
