"""The import rules of docs/architecture.md, checked against every module's real imports, and the
page itself checked against the tree: every package, module and tool named, nothing linked
outside the repository.

Imports are read with ``ast`` from the source, all of them: at module level, inside functions
(the lazy imports) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("service", "pfvit_client", "pfvit_batch", "training", "tools")

# The service modules that are a library for training and the tools: the card, the settings,
# the errors, running exported models as the service runs them, and the vision code. Not the
# web layer (service.api, service.app, service.server, ...), nor the service's state.
SERVICE_LIBRARY = (
    "service.card",
    "service.config",
    "service.errors",
    "service.models",
    "service.pipeline",
    "service.runtime",
    "service.scheduling",
    "service.vision",
)

# Third-party imports each installable part may make besides the standard library: the
# distributions of its own dependencies in pyproject.toml (import names).
SERVICE_THIRD_PARTY = {
    "PIL",
    "numpy",
    "fastapi",
    "fastapi_offline",
    "starlette",
    "uvicorn",
    "h11",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "prometheus_client",
    "mimeparse",
    "threadpoolctl",
    "onnxruntime",
}
CLIENT_THIRD_PARTY = {"httpx", "numpy", "PIL", "tqdm", "av"}
BATCH_THIRD_PARTY = {"ray", "pyarrow", "httpx", "tqdm", "av", "numpy", "pydantic"}


def _within(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_import(importer: str, imported: str) -> str | None:
    """Why ``importer`` (a module name) may not import ``imported``; None when it may."""
    package = importer.split(".")[0]
    top = imported.split(".")[0]
    if top == "tests":
        return "nothing outside tests/ imports the tests (the tests use the tools, not the other way round)"
    first_party = top in PACKAGES
    if top == package:
        return None
    stdlib = top in sys.stdlib_module_names or top == "__future__"
    if package == "service":
        if first_party:
            return "the service imports nothing from training, the tools, the client or pfvit-batch"
        if not stdlib and top not in SERVICE_THIRD_PARTY:
            return f"the service imports only its own dependencies ({top} is not one; torch never)"
    elif package == "pfvit_client":
        if first_party:
            return "the client imports nothing from the service, training, the tools or pfvit-batch"
        if not stdlib and top not in CLIENT_THIRD_PARTY:
            return f"the client imports only the client extra's packages ({top} is not one)"
    elif package == "pfvit_batch":
        if first_party and top not in ("pfvit_client", "service"):
            return "pfvit-batch imports only the client and the service of the repository's packages"
        if not first_party and not stdlib and top not in BATCH_THIRD_PARTY:
            return f"pfvit-batch imports only the ray extra's packages and the service's ({top} is not one)"
    elif package == "training":
        if first_party and not _within(imported, SERVICE_LIBRARY):
            return "training imports only the service's library modules (docs/architecture.md) of the other packages"
    elif package == "tools":
        if first_party and top not in ("training", "pfvit_client") and not _within(imported, SERVICE_LIBRARY):
            return "the tools import training, the client and the service's library modules, not its web layer"
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in the file; relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # ``from service import metrics`` imports service.metrics: judge the submodule.
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names] if name in PACKAGES else []
            found += [(node.lineno, name)] if name not in PACKAGES else []
    return found


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_every_module_keeps_the_import_rules():
    broken = [
        f"{path.relative_to(REPO)}:{line}: {name}: {why}"
        for path in _modules()
        for line, name in _imports(path)
        if (why := check_import(_module_name(path), name))
    ]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("service.models", "torch", False),
        ("service.app", "training.model", False),
        ("service.vision.mtcnn", "onnxruntime", True),
        ("pfvit_client.client", "service.errors", False),
        ("pfvit_client.client", "httpx", True),
        ("pfvit_batch.work", "service.state", True),
        ("pfvit_batch.cli", "training.cli", False),
        ("training.served_eval", "service.pipeline", True),
        ("training.default_model", "service.vision.imaging", True),
        ("training.engine", "service.api.analysis", False),
        ("training.data.datasets", "tools.loopback", False),
        ("tools.bench_photos", "service.vision.faces", True),
        ("tools.bench_photos", "service.app", False),
        ("tools.soak", "training.render", True),
        ("tools.detector_fidelity", "tests.test_mtcnn", False),
    ],
)
def test_the_rules_can_fail(importer, imported, allowed):
    assert (check_import(importer, imported) is None) == allowed


def test_imports_are_read_where_they_are_made():
    names = {name for _, name in _imports(REPO / "service" / "server.py")}
    # ``from service import metrics`` reaches service.metrics; third-party names stay whole.
    assert {"service.metrics", "uvicorn.protocols.http.h11_impl", "h11"} <= names
    lazy = {name for _, name in _imports(REPO / "pfvit_batch" / "cli.py")}
    assert "service.api.options" in lazy  # imported inside a function


# --- the page -------------------------------------------------------------------------------


def _layout() -> dict[str, set[str]]:
    """The Layout block: top-level folder -> the paths listed under it."""
    block = DOC.read_text(encoding="utf-8").split("```")[1]
    sections: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        if line and not line.startswith(" "):
            current = line.split()[0].rstrip("/")
            sections[current] = set()
        elif current is not None and (match := re.match(r"^  (\S+)", line)):
            sections[current].add(match[1])
    return sections


def test_the_layout_names_every_package_and_module():
    layout = _layout()
    for package in ("service", "pfvit_client", "pfvit_batch", "training"):
        listed = layout[package]
        files = {str(p.relative_to(REPO / package)) for p in (REPO / package).rglob("*.py") if p.name != "__init__.py"}
        assert not files - listed, f"{package}/: not in docs/architecture.md: {sorted(files - listed)}"
        assert not {f for f in listed if f.endswith(".py")} - files - {"__init__.py"}, f"{package}/: listed but gone"
        subpackages = {str(p.parent.relative_to(REPO / package)) for p in (REPO / package).rglob("__init__.py")}
        for sub in subpackages - {"."}:
            assert any(entry.startswith(sub + "/") for entry in listed), f"{package}/{sub}/ not named"
    assert "tools" in layout


def test_the_layout_names_every_tool():
    text = DOC.read_text(encoding="utf-8")
    tools_section = text.split("```")[1].split("\ntools/", 1)[1].split("\nmodels/", 1)[0]
    tools = sorted(p.name for p in (REPO / "tools").glob("*.py") if p.name != "__init__.py")
    assert [t for t in tools if t not in tools_section] == []


def test_the_page_links_nothing_outside_the_repository():
    text = DOC.read_text(encoding="utf-8")
    # Markdown links, and paths in code spans that climb out of docs/ (API routes like
    # `/metrics` are not files).
    targets = re.findall(r"\]\(([^)#\s]+)", text) + re.findall(r"`(\.\./[^`\s]+)`", text)
    for target in targets:
        if re.match(r"[a-z]+://", target):
            continue  # a web address is not a file of ours
        resolved = (DOC.parent / target).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"docs/architecture.md links {target!r}"
    assert "../shared" not in text


def test_the_vision_package_says_what_it_is():
    import service.vision

    doc = service.vision.__doc__ or ""
    assert not doc.lower().startswith("pure"), "the package holds ONNX Runtime sessions: it is not pure"
    assert all(f"``{module}``" in doc for module in ("imaging", "mtcnn", "align", "faces", "expression_map"))
