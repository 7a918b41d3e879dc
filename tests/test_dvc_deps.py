"""dvc.yaml lists, for every stage, each module of `ups/` its command can run.

A stage whose code changes must re-run; DVC only knows about the files in its `deps:`. The
closure is computed from the source (static AST analysis), starting where the stage's `cmd`
starts: `python -m ups <command>` runs `ups/__init__.py`, `ups/__main__.py`, `ups/cli.py` (its
module-level imports and the handler of `<command>`), then everything those import, at module
level or inside functions (a lazy import still runs when the stage needs it), plus the
`__init__.py` of each package on the way. `python -m ups.launch train` runs `ups/launch.py`,
which re-executes `python -m ups train`. Imports in the other commands' handlers and in the
error path of `main` do not shape a stage's outputs and are left out.

When a module is added or imported somewhere new, the failure names the line to add to which
stage's `deps:` and the import that pulls it in.
"""

from __future__ import annotations

import ast
import functools
import shlex
from collections import deque
from pathlib import Path

import yaml

from ups import launch

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ups"


def module_path(root: Path, name: str) -> Path | None:
    """ups.stages.select -> <root>/ups/stages/select.py (or the package's __init__.py)."""
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(nodes: list[ast.stmt]):  # noqa: ANN202 (a generator of nodes)
    """Every node under `nodes`, skipping `if TYPE_CHECKING:` blocks (never run)."""
    todo = deque(nodes)
    while todo:
        node = todo.popleft()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imported(root: Path, path: Path, nodes: list[ast.stmt]) -> set[str]:
    """Names of the package's modules that the statements `nodes` of module `path` import."""
    me = _module_name(root, path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in _walk(nodes):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in out if m.split(".")[0] == PACKAGE and module_path(root, m) is not None}


def _packages(name: str) -> list[str]:
    """ups.stages.select -> [ups, ups.stages]: their __init__.py run first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cli_handler_nodes(tree: ast.Module, command: str) -> list[ast.stmt]:
    """The body of the cli function that handles `command`, and of cli functions it calls."""
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    handler = None
    for fn in funcs.values():
        name = None
        for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
            f = call.func
            callee = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            args = call.args
            if callee == "_stage_parser" and len(args) >= 4 and isinstance(args[1], ast.Constant):
                name, candidate = args[1].value, args[3]
                if name == command and isinstance(candidate, ast.Name):
                    handler = candidate.id
            elif callee == "add_parser" and args and isinstance(args[0], ast.Constant):
                name = args[0].value
            elif callee == "set_defaults" and name == command:
                for kw in call.keywords:
                    if kw.arg == "handler" and isinstance(kw.value, ast.Name):
                        handler = kw.value.id
    assert handler in funcs, f"ups/cli.py has no handler for the command {command!r}"
    seen, todo = set(), [handler]
    while todo:
        fn = funcs[todo.pop()]
        if fn.name in seen:
            continue
        seen.add(fn.name)
        todo.extend(n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Name) and n.func.id in funcs)
    return [funcs[name] for name in sorted(seen)]


def closure(root: Path, entry: str, command: str | None) -> dict[str, str]:
    """Every module `python -m <entry> <command>` can run -> the module that first imports it."""
    via: dict[str, str] = {}
    todo: deque[tuple[str, str]] = deque((p, f"python -m {entry}") for p in _packages(entry))
    todo.append((entry, f"python -m {entry}"))
    if entry == PACKAGE:
        todo.append((f"{PACKAGE}.__main__", f"python -m {entry}"))
    while todo:
        name, parent = todo.popleft()
        if name in via:
            continue
        via[name] = parent
        path = module_path(root, name)
        assert path is not None, name
        tree = _parse(path)
        if name == f"{PACKAGE}.cli":
            assert command, "ups/cli.py reached without a command"
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom | ast.If | ast.Try)]
            nodes = top + cli_handler_nodes(tree, command)
        else:
            nodes = tree.body
        for dep in sorted(imported(root, path, nodes)):
            for p in [*_packages(dep), dep]:
                todo.append((p, name))
    return via


@functools.cache
def _parse(path: Path) -> ast.Module:
    """A module's tree, parsed once for all the stages that reach it."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(root: Path, module: str) -> str:
    path = module_path(root, module)
    assert path is not None, module
    return path.relative_to(root).as_posix()


def stage_entry(cmd: str) -> tuple[str, str]:
    """`python -m ups select --x y` -> ('ups', 'select'); ups.launch re-executes `-m ups`."""
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], f"stage cmd {cmd!r} is not `python -m ...`"
    return words[2], words[3]


def missing_deps(root: Path, dvc_yaml: Path) -> list[str]:
    """One message per missing dep: which line to add to which stage, and why."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    problems = []
    for stage, spec in stages.items():
        entry, command = stage_entry(spec["cmd"])
        modules = closure(root, entry, command)
        if entry == f"{PACKAGE}.launch":
            modules |= {k: v for k, v in closure(root, PACKAGE, command).items() if k not in modules}
        deps = {str(d) for d in spec.get("deps", [])}
        for name, parent in sorted(modules.items()):
            rel = _rel(root, name)
            if rel not in deps:
                why = parent if parent.startswith("python ") else f"imported by {_rel(root, parent)}"
                problems.append(f"stage {stage!r}: add `- {rel}` to its deps ({why})")
        for d in sorted(deps):
            if d.startswith(f"{PACKAGE}/") and not (root / d).exists():
                problems.append(f"stage {stage!r}: dep `{d}` does not exist; remove it")
    return problems


def test_every_stage_lists_its_import_closure() -> None:
    problems = missing_deps(REPO, REPO / "dvc.yaml")
    assert not problems, "dvc.yaml deps are incomplete:\n" + "\n".join(problems)


def test_launch_re_executes_python_dash_m_ups() -> None:
    """The closure of `python -m ups.launch train` follows `-m ups train` because launch does."""
    assert launch.command(["train", "--x"], 1, 1, {})[1:] == ["-m", "ups", "train", "--x"]
    assert launch.command(["train"], 2, 1, {})[-3:] == ["-m", "ups", "train"]


def test_closure_follows_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "stages").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "__main__.py": "from ups.cli import main\n",
        "cli.py": ("from ups import logs\n\n"
                   "def _a(args):\n    from ups.stages import one\n    _helper()\n\n"
                   "def _helper():\n    import ups.helped\n\n"
                   "def _b(args):\n    from ups.stages import two\n\n"
                   "def _add_a(sub):\n    p = _stage_parser(sub, 'a', 'help', _a)\n\n"
                   "def _add_b(sub):\n    p = sub.add_parser('b')\n    p.set_defaults(handler=_b)\n\n"
                   "def main():\n    from ups import error_path\n"),
        "logs.py": "", "helped.py": "", "error_path.py": "", "typing_only.py": "",
        "lazy.py": "", "rel.py": "",
        "stages/__init__.py": "",
        "stages/one.py": ("from typing import TYPE_CHECKING\nfrom . import two\nfrom ..rel import x\n"
                          "if TYPE_CHECKING:\n    from ups import typing_only\n"
                          "def run():\n    import ups.lazy\n"),
        "stages/two.py": "",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    got = set(closure(tmp_path, PACKAGE, "a"))
    assert got == {"ups", "ups.__main__", "ups.cli", "ups.logs", "ups.stages", "ups.stages.one",
                   "ups.stages.two", "ups.helped", "ups.rel", "ups.lazy"}
    assert set(closure(tmp_path, PACKAGE, "b")) == {"ups", "ups.__main__", "ups.cli", "ups.logs",
                                                   "ups.stages", "ups.stages.two"}
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(yaml.safe_dump({"stages": {"b": {
        "cmd": "python -m ups b --out x",
        "deps": ["ups/__init__.py", "ups/__main__.py", "ups/cli.py", "ups/logs.py",
                 "ups/stages/__init__.py", "ups/gone.py"]}}}))
    assert missing_deps(tmp_path, dvc_yaml) == [
        "stage 'b': add `- ups/stages/two.py` to its deps (imported by ups/cli.py)",
        "stage 'b': dep `ups/gone.py` does not exist; remove it",
    ]
