"""pyproject.toml says the truth: runtime dependencies are exactly what production code imports.

Reads every import of the production packages (absync, streams, schemas, processors, connectors,
projections) with ``ast`` and maps them to installed distributions.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCTION = ["absync", "streams", "schemas", "processors", "connectors", "projections"]
# Declared for a reason other than an import: a driver loaded by URL, a server, a package whose
# absence costs CPU (sniffio), a form parser FastAPI loads by itself.
# jinja2 is loaded by fastapi.templating for the console.
NOT_IMPORTED_BUT_NEEDED = {"psycopg", "uvicorn", "sniffio", "python-multipart", "jinja2"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _owner(origin: str, candidates: list[str]) -> str | None:
    """The distribution, among ``candidates``, that installed the file ``origin``."""
    target = Path(origin).resolve()
    for name in candidates:
        dist = distribution(name)
        if any(Path(str(dist.locate_file(f))).resolve() == target for f in dist.files or []):
            return _normalise(dist.metadata["Name"])
    return None


def imported_distributions() -> set[str]:
    """The distributions whose files production code imports (namespace packages such as ``google``
    resolved by the file each imported module comes from)."""
    modules: set[str] = set()
    for package in PRODUCTION:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module)
    by_top = packages_distributions()
    found: set[str] = set()
    for module in modules:
        top = module.split(".")[0]
        if top in PRODUCTION or top in sys.stdlib_module_names:
            continue
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"production imports {module}, which is not installed"
        owner = _owner(spec.origin, by_top.get(top, []))
        assert owner, f"no installed distribution owns {spec.origin} ({module})"
        found.add(owner)
    return found


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_normalise(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    extras = {
        _normalise(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0])
        for deps in project["optional-dependencies"].values()
        for d in deps
    }
    return runtime, extras


def test_every_production_import_is_a_runtime_dependency() -> None:
    runtime, _ = declared()
    missing = imported_distributions() - runtime
    assert not missing, f"imported by production code but not in [project] dependencies: {sorted(missing)}"


def test_every_runtime_dependency_is_imported_by_production_code() -> None:
    runtime, _ = declared()
    unused = runtime - imported_distributions() - NOT_IMPORTED_BUT_NEEDED
    assert not unused, f"runtime dependencies production never imports (move to an extra): {sorted(unused)}"


def test_test_and_evidence_only_packages_are_extras() -> None:
    runtime, extras = declared()
    for name in ("faust-streaming", "testcontainers", "pytest"):
        assert name not in runtime
        assert name in extras
