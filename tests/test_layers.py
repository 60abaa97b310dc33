"""The import layers, read from the source with `ast` (nothing is imported).

    top       apps/, sdk/      the CLI, launcher, bench, checkpoint tools, in-process composition, client SDK
    services  services/<name>/ self-contained: a service never imports another one
    shared    shared/          the base
    protos    vita.*           generated stubs

Each layer imports only the layers below it. scripts/ is exempt: one-off tools that may reach anywhere.
Every rule is a row of RULES; a failure lists each offending import with its file and line.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("shared", "services", "apps", "sdk")

# Libraries that hold or compute model tensors. The orchestrator only forwards embeddings as wire bytes,
# so it needs none of them (torch alone costs ~4 s and ~340 MB at start).
MODEL_LIBRARIES = (
    "torch", "torchaudio", "torchvision", "numpy", "scipy", "safetensors", "transformers",
    "onnxruntime", "av", "PIL", "soundfile",
)
# What "knowing gRPC" means for model code: the runtime, its add-ons, and the generated messages.
GRPC = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "vita", "google.protobuf")
# In a model service, only these modules speak the wire: the servicer, the entry point that serves it, and
# the service's `rpc` package (handlers split out of a large servicer).
WIRE_MODULES = ("server", "__main__")
WIRE_PACKAGE = "rpc"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the importing file
    imported: str  # dotted name, resolved to a module where the target is a first-party module
    path: Path
    line: int
    runtime: bool  # executed when the importer is imported (not inside a function or `if TYPE_CHECKING`)

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} imports {self.imported}"


# ----- reading the tree -----


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_files() -> dict[str, Path]:
    files = {}
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[module_name(path)] = path
    return files


FILES = first_party_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, runtime: bool):
    """Yields (import node, runs at import time) for every import under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, runtime
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), False)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), runtime)
        else:
            yield from _walk(child, runtime)


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node, runtime in _walk(tree, True):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = _absolute(module, path, node)
            # `from pkg import name`: name is a submodule when such a file exists, else an attribute of pkg.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in FILES else base for a in node.names]
        found += [Import(module, name, path, node.lineno, runtime) for name in dict.fromkeys(names)]
    return found


IMPORTS = {module: imports_of(module, path) for module, path in FILES.items()}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# ----- the rules -----


def under(*prefixes: str) -> Callable[[str], bool]:
    return lambda module: any(within(module, p) for p in prefixes)


def any_of(*prefixes: str) -> Callable[[str, str], bool]:
    return lambda importer, imported: any(within(imported, p) for p in prefixes)


def service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


def another_service(importer: str, imported: str) -> bool:
    target = service_of(imported)
    return target is not None and target != service_of(importer)


def model_code(module: str) -> bool:
    """Every module of a model service except its servicer, entry point and `rpc` package (and the package
    files)."""
    service = service_of(module)
    parts = module.split(".")
    return (
        service not in (None, "orchestrator")
        and len(parts) >= 3
        and parts[-1] not in WIRE_MODULES
        and parts[2] != WIRE_PACKAGE
    )


@dataclass(frozen=True)
class Rule:
    says: str
    applies_to: Callable[[str], bool]
    forbids: Callable[[str, str], bool]
    why: str


RULES = (
    Rule("shared imports no layer above it", under("shared"), any_of("services", "apps", "sdk"),
         "the base is used by every layer and knows none of them"),
    Rule("services import neither apps nor the SDK", under("services"), any_of("apps", "sdk"),
         "apps and the SDK are built on the services, not the other way round"),
    Rule("a service imports no other service", under("services"), another_service,
         "each service is its own process and image; they meet only over gRPC"),
    Rule("the SDK imports neither services nor apps", under("sdk"), any_of("services", "apps"),
         "the SDK is a client of the public API; a platform backend installs it without the models"),
    Rule("the orchestrator imports no model library", under("services.orchestrator"), any_of(*MODEL_LIBRARIES),
         "embeddings pass through it as wire tensors"),
    Rule("model code imports no gRPC", model_code, any_of(*GRPC),
         "servicers translate protobuf to domain types; engines and models never see the wire"),
)


def violations(rule: Rule) -> list[str]:
    return [
        f"{found}  ({rule.why})"
        for module, found_list in IMPORTS.items()
        if rule.applies_to(module)
        for found in found_list
        if rule.forbids(module, found.imported)
    ]


def test_the_tree_has_the_layers():
    # A rule that matches no file proves nothing: the walk must see the packages it checks.
    assert any(under("shared")(m) for m in FILES) and any(under("services.orchestrator")(m) for m in FILES)
    assert any(model_code(m) for m in FILES) and any(under("apps")(m) for m in FILES)
    assert IMPORTS["services.orchestrator.server"], "the import walk found nothing"


def test_each_layer_imports_only_the_layers_below_it():
    failures = [f"{rule.says}:\n  " + "\n  ".join(found) for rule in RULES if (found := violations(rule))]
    assert not failures, "import layering broken:\n" + "\n".join(failures)


# ----- what the orchestrator loads, transitively -----


def loaded_by(module: str) -> list[str]:
    """`module` and the packages whose __init__ runs first when it is imported."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def runtime_chains(roots: list[str]) -> dict[str, list[str]]:
    """Every name imported at import time of `roots`, followed through first-party modules, each with the
    chain of modules that leads to it. Imports inside functions are left out: they run on use."""
    chains: dict[str, list[str]] = {root: [root] for root in roots}
    queue = deque(roots)
    while queue:
        module = queue.popleft()
        for found in IMPORTS.get(module, ()):
            if not found.runtime:
                continue
            for name in loaded_by(found.imported):
                if name not in chains:
                    chains[name] = chains[module] + [name]
                    if name in FILES:
                        queue.append(name)
    return chains


def test_the_orchestrator_loads_no_model_library_through_shared():
    roots = [m for m in FILES if under("services.orchestrator")(m)]
    reached = runtime_chains(roots)
    leaks = [
        " → ".join(chain)
        for name, chain in reached.items()
        if any(within(name, library) for library in MODEL_LIBRARIES)
        or (service_of(name) not in (None, "orchestrator"))
    ]
    assert not leaks, "the orchestrator loads model code at import time:\n  " + "\n  ".join(leaks)


# ----- the walk itself -----


def test_relative_imports_resolve_to_modules():
    nodes = ast.parse("from .backends import CallIds\nfrom .. import orchestrator\nfrom . import media").body
    path = ROOT / "services" / "orchestrator" / "conversation.py"
    resolved = [_absolute("services.orchestrator.conversation", path, node) for node in nodes]
    assert resolved == ["services.orchestrator.backends", "services", "services.orchestrator"]


def test_lazy_and_type_checking_imports_are_not_runtime():
    tree = ast.parse(
        "import a\n"
        "if TYPE_CHECKING:\n    import b\n"
        "def f():\n    import c\n"
        "try:\n    import d\nexcept ImportError:\n    pass\n"
    )
    seen = {node.names[0].name: runtime for node, runtime in _walk(tree, True)}
    assert seen == {"a": True, "b": False, "c": False, "d": True}


def test_the_rules_catch_each_kind_of_violation():
    def caught(importer: str, imported: str) -> bool:
        return any(rule.applies_to(importer) and rule.forbids(importer, imported) for rule in RULES)

    forbidden = [
        ("shared.settings", "services.llm.config"),
        ("shared.checkpoint.inspect", "apps.checkpoint.synth"),
        ("services.llm.engine", "apps.inprocess"),
        ("services.orchestrator.media", "services.llm.engine"),
        ("services.speech.tts", "services.llm.model"),
        ("sdk.client", "services.orchestrator.backends"),
        ("services.orchestrator.media", "torch"),
        ("services.orchestrator.voice", "numpy"),
        ("services.speech.engine", "grpc"),
        ("services.vision.model", "vita.vision.v1.vision_pb2"),
    ]
    allowed = [
        ("apps.inprocess", "services.llm.engine"),
        ("apps.cli", "sdk.client"),
        ("services.llm.server", "grpc"),
        ("services.llm.__main__", "vita.llm.v1.llm_pb2"),
        ("services.orchestrator.grpc_backends", "grpc"),
        ("services.orchestrator.server", "services.orchestrator.backends"),
        ("services.orchestrator.grpc_backends", "shared.wire_tensor"),
        ("services.llm.engine", "torch"),
        ("services.llm.server", "shared.tensors"),
    ]
    assert [pair for pair in forbidden if not caught(*pair)] == []
    assert [pair for pair in allowed if caught(*pair)] == []
