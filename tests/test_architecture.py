"""The shape of the package: dependencies point one way (apps -> bench ->
core, apps -> scale -> core, backends -> core), no import cycles, and importing radar-ad changes no
global state."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import radar_ad

PACKAGE = Path(radar_ad.__file__).parent
BUILT_ON_CORE = ("apps", "bench", "backends", "scale")
# what each sub-package may import besides the core (and itself)
ALLOWED = {"apps": {"bench", "scale"}, "bench": set(), "backends": set(), "scale": set()}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the radar_ad modules it imports (every import statement,
    including those under ``if TYPE_CHECKING:`` and inside functions)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in BUILT_ON_CORE else "core"


def test_no_import_cycles():
    graph = import_graph()
    # a package importing its own modules (its __init__) is not a cycle of concern
    edges = {m: {t for t in ts if not t.startswith(m + ".") and not m.startswith(t + ".")}
             for m, ts in graph.items()}
    graphlib.TopologicalSorter(edges).prepare()  # raises CycleError naming the cycle


def test_dependencies_point_one_way():
    wrong = []
    for module, targets in import_graph().items():
        source = layer(module)
        for target in targets:
            goal = layer(target)
            if source == "core":
                allowed = goal == "core" or module == "radar_ad.__main__"
            else:
                allowed = goal in ("core", source) or goal in ALLOWED[source]
            if not allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_importing_the_package_loads_no_app_or_engine_and_changes_no_global():
    code = ("import sys, PIL.Image; before = PIL.Image.MAX_IMAGE_PIXELS; import radar_ad, radar_ad.data; "
            "loaded = sorted(m for m in sys.modules if m.startswith(('radar_ad.apps', 'radar_ad.bench', "
            "'radar_ad.scale', 'onnxruntime', 'openvino', 'fastapi', 'ray'))); "
            "print(loaded, PIL.Image.MAX_IMAGE_PIXELS == before)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True"


def test_the_service_and_the_ray_engine_stand_on_their_own_parts():
    """``radar_ad.apps.serve`` imports no other app (the command line starts
    it, never the other way round); the Ray engine's I/O
    (``scale.ray_io``) knows nothing of its actors (``scale.ray_detect``)."""
    graph = import_graph()
    wrong = [f"{module} -> {target}" for module, targets in graph.items()
             if module.startswith("radar_ad.apps.serve") for target in targets
             if target.startswith("radar_ad.apps.") and not target.startswith("radar_ad.apps.serve")]
    assert not wrong, wrong
    assert "radar_ad.scale.ray_detect" not in graph["radar_ad.scale.ray_io"]
