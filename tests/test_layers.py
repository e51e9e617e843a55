"""The library core never imports the applications (advrepair.apps)."""
import ast
from pathlib import Path

import advrepair

PACKAGE = Path(advrepair.__file__).parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_core_module_imports_an_application():
    core = [p for p in PACKAGE.rglob("*.py") if "apps" not in p.relative_to(PACKAGE).parts
            and p.name != "__main__.py"]
    assert len(core) > 50
    offenders = {str(p.relative_to(PACKAGE)): sorted(n for n in _imports(p) if n.startswith("advrepair.apps"))
                 for p in core}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_apps_package_holds_every_application():
    apps = {p.name for p in (PACKAGE / "apps").iterdir()}
    assert {"cli.py", "commands.py", "demo.py", "pipeline.py", "experiments"} <= apps
    assert not any((PACKAGE / name).exists() for name in ("cli.py", "commands.py", "demo.py", "pipeline.py",
                                                          "experiments"))
