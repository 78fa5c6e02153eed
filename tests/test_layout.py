"""The layout's promises: the processes import no development tooling, and no test module imports another."""

import ast
import subprocess
import sys

from tests.helpers import ROOT

#: Folders whose modules the API, the worker and the CLI must never import (the image holds api/, worker/, shared/).
TOOLING = ("devstack", "deploy", "loadtest", "tests")


def test_the_processes_import_no_development_tooling() -> None:
    packages = ("api", "worker", "shared")
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name.removesuffix('.__init__'))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TOOLING!r}))\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert len(modules) > 40  # every module of the three packages was imported
    assert shown.stdout.strip() == "[]"


def test_no_test_module_imports_another() -> None:
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if name.startswith("tests.") and name not in ("tests.helpers", "tests.conftest")
            ]
            if isinstance(node, ast.ImportFrom) and node.module == "tests.conftest":
                found.append(
                    f"{path.relative_to(ROOT)}: tests.conftest (fixtures need no import; helpers are in tests.helpers)"
                )
    assert found == []
