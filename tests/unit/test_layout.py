"""The code layout holds together: every import of hookpack resolves, nothing below the CLI
imports the CLI, every action is one folder with one registry line, cited paths exist.

Static (ast) over every Python file of the repository, so lazy imports inside functions,
`python -m hookpack...` / `python -c "import hookpack..."` strings and mock.patch targets
are checked too, not only what a test run happens to execute. The modules named are
imported (hookpack's modules are import-safe: no work at import time).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from hookpack import registry

ROOT = Path(__file__).resolve().parents[2]
TREES = ("hookpack", "tests", "bench", "scripts", "vm-testbed")
CLI_IMPORTERS = {"hookpack/cli.py", "hookpack/__main__.py"}
DOTTED = re.compile(r"hookpack(?:\.\w+)+")
# file names that look dotted (hookpack.toml, hookpack.prom), not module paths
FILE_SUFFIXES = {"toml", "prom", "log", "json", "lock", "conf", "py", "service", "timer", "txt"}
CITED_PATH = re.compile(r"(?<![\w/.-])hookpack/[\w/]+\.py\b")


def tracked(*trees: str) -> list[Path]:
    """The files of ``trees`` as git tracks them: never build outputs (venvs, the
    testbed's cache with whole root filesystems), in a clean clone or a used checkout."""
    out = subprocess.run(["git", "ls-files", "-z", "--", *trees], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sorted(ROOT / name for name in out.split("\0") if name)


def python_files() -> list[Path]:
    files: list[Path] = []
    for path in tracked(*TREES):
        if not path.is_file() or path == Path(__file__).resolve():
            continue  # (this file's probes name missing modules on purpose)
        if path.suffix == ".py" or (not path.suffix and _python_script(path)):
            files.append(path)
    return files


def _python_script(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            first = handle.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


def module_name(path: Path, root: Path = ROOT) -> str | None:
    """The dotted name of a module under hookpack/ (for relative imports)."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[0] != "hookpack":
        return None
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, path: Path,
            root: Path = ROOT) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, imported name or None) for every import of hookpack.*, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "hookpack" or alias.name.startswith("hookpack."):
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module_name(path, root)
                assert here is not None, f"{rel(path, root)}:{node.lineno}: relative import " \
                                         "outside hookpack/"
                package = here if path.name == "__init__.py" else here.rpartition(".")[0]
                base = importlib.util.resolve_name("." * node.level + base, package)
            if base == "hookpack" or base.startswith("hookpack."):
                for alias in node.names:
                    yield node.lineno, base, alias.name


def strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def _module(name: str) -> ModuleType | None:
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name)


def has_name(module: str, name: str) -> bool:
    """`from module import name` works: an attribute of the module or its submodule."""
    mod = _module(module)
    if mod is None:
        return False
    if name == "*" or hasattr(mod, name):
        return True
    return _module(f"{module}.{name}") is not None


def resolves(dotted: str) -> bool:
    """A dotted path names a module, or an attribute chain below the longest module prefix
    (mock.patch targets, `-m` arguments, registry entries)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        mod = _module(".".join(parts[:cut]))
        if mod is None:
            continue
        obj: object = mod
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def layout_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    """What does not hold, one line each, naming file and line."""
    problems: list[str] = []
    for path in files:
        where = rel(path, root)
        tree = ast.parse(path.read_text(), filename=where)
        for line, module, name in imports(tree, path, root):
            if name is None and _module(module) is None:
                problems.append(f"{where}:{line}: import {module}: no such module")
            elif name is not None and not has_name(module, name):
                what = "no such module" if _module(module) is None else "no such name"
                problems.append(f"{where}:{line}: from {module} import {name}: {what}")
            if (module == "hookpack.cli" or (module == "hookpack" and name == "cli")) \
                    and where.startswith("hookpack/") and where not in CLI_IMPORTERS:
                problems.append(f"{where}:{line}: imports hookpack.cli: nothing below the CLI "
                                "imports the CLI (hookpack.config.load is the loader)")
        for line, text in strings(tree):
            problems += _string_problems(where, line, text)
    return problems


def _string_problems(where: str, line: int, text: str) -> list[str]:
    problems: list[str] = []
    snippet = None
    if "import hookpack" in text or "from hookpack" in text:
        try:
            snippet = ast.parse(text)
        except SyntaxError:
            snippet = None
    if snippet is not None:  # a `python -c` program
        for _, module, name in imports(snippet, Path(where)):
            ok = _module(module) is not None if name is None else has_name(module, name)
            if not ok:
                problems.append(f"{where}:{line}: snippet imports {module}"
                                f"{'' if name is None else ' ' + name}: does not resolve")
    elif DOTTED.fullmatch(text.strip()) and text.strip().rpartition(".")[2] not in \
            FILE_SUFFIXES and not resolves(text.strip()):
        problems.append(f"{where}:{line}: {text.strip()!r} names no module or attribute")
    for cited in CITED_PATH.findall(text):
        if not (ROOT / cited).is_file():
            problems.append(f"{where}:{line}: cites {cited}, which does not exist")
    return problems


def test_every_hookpack_import_and_dotted_name_resolves() -> None:
    files = python_files()
    assert len(files) > 100  # the walk found the trees
    assert layout_problems(files) == []


def test_the_checker_catches_a_typo(tmp_path: Path) -> None:
    bad = tmp_path / "tests" / "probe.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from hookpack.actions.shaping import nfft\n"
                   "    import hookpack.shaping.tc\n"
                   "CMD = ['python', '-m', 'hookpack.pinning.memory']\n"
                   "SNIP = 'from hookpack.actions.shaping.tc import NoSuch'\n"
                   "DOC = 'see hookpack/shaping/tc.py'\n")
    problems = layout_problems([bad], root=tmp_path)
    assert len(problems) == 5, problems


def test_a_module_below_the_cli_importing_it_is_caught(tmp_path: Path) -> None:
    probe = tmp_path / "hookpack" / "jobwatch.py"
    probe.parent.mkdir()
    probe.write_text("def f():\n    from hookpack.cli import load\n    return load\n")
    assert layout_problems([probe], root=tmp_path) == [
        "hookpack/jobwatch.py:2: imports hookpack.cli: nothing below the CLI imports the CLI "
        "(hookpack.config.load is the loader)"]
    (tmp_path / "hookpack" / "cli.py").write_text("from hookpack.cli import load\n")
    assert layout_problems([tmp_path / "hookpack" / "cli.py"], root=tmp_path) == []


def test_each_action_is_one_folder_with_one_registry_line() -> None:
    folders = sorted(p.parent.name for p in (ROOT / "hookpack" / "actions").glob("*/action.py"))
    entries = sorted(spec.module for spec in registry.ACTIONS)
    assert entries == sorted(f"hookpack.actions.{name}.action" for name in folders)
    loose = [rel(p) for p in (ROOT / "hookpack" / "actions").glob("*.py")
             if p.name != "__init__.py"]
    assert loose == [], "an action is a folder hookpack/actions/<name>/ (docs/development.md)"
    for spec in registry.ACTIONS:
        module = importlib.import_module(spec.module)
        assert isinstance(getattr(module, "SETTINGS", None), dict), spec.module
        assert callable(getattr(module, "run", None)), spec.module
        assert callable(getattr(module, "add_cli", None)) == spec.cli, spec.module


def test_docs_cite_existing_paths() -> None:
    docs = [p for p in tracked("README.md", "docs", "vm-testbed") if p.suffix == ".md"]
    missing = [f"{rel(doc)}: {cited}" for doc in docs
               for cited in CITED_PATH.findall(doc.read_text())
               if not (ROOT / cited).is_file()]
    assert missing == []
