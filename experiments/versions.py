"""Code versions of records: each job is keyed by the code it actually runs.

A job's code is the part of experiments/jobs.py its stage runs (the stage's function, the jobs.py
functions it calls, and the module's top-level statements: imports and constants) plus every module of esolm/ and baselines/ that its stage
imports (followed statically through the import statements, function-level imports included)
and the file of every model it builds, which the registry imports by name (esolm/models.toml, the table of names, is data: adding a
model stales no other model's jobs, and a new stage function in jobs.py stales no other stage). Each file enters as
its syntax tree with docstrings dropped (comments are not in the tree): a documentation edit
keeps every record valid, a change to baselines/bd3lm.py makes only BD3-LM's records stale.

A record keeps the hash of each file it depended on (``code_files``), so that ``pareto`` and
``status`` can say which file made a record stale.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

from esolm.io import content_hash

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("esolm", "baselines")  # the packages whose modules a job's code is followed into
JOBS = "experiments/jobs.py"


@functools.lru_cache(maxsize=None)
def file_hash(path: str) -> str:
    """Hash of one file's syntax tree without docstrings (``path`` relative to the root)."""
    return _tree_hash(ast.parse((ROOT / path).read_text()))


def _tree_hash(tree: ast.AST) -> str:
    """Hash of a syntax tree with the docstrings of its module, classes and functions dropped."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return content_hash(ast.dump(tree, include_attributes=False))[:12]


def module_file(module: str) -> str | None:
    """The file of a library module (``esolm.eso.model`` -> ``esolm/eso/model.py``), None
    when the name is not one (an attribute imported from a package, a third-party module)."""
    if module.split(".")[0] not in LIBRARY:
        return None
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return str(path.relative_to(ROOT))
    return None


@functools.lru_cache(maxsize=None)
def imports_of(path: str) -> frozenset[str]:
    """Library files that ``path`` imports (anywhere in the file), with their packages' __init__."""
    out = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # "from esolm import masks" names a module; "from esolm.config import X" an attribute
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                f = module_file(".".join(parts[:i]))
                if f:
                    out.add(f)
    out.discard(path)
    return frozenset(out)


def closure(files) -> list[str]:
    """``files`` and every library file they import, transitively, sorted."""
    seen, todo = set(), list(files)
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(imports_of(f))
    return sorted(seen)


def model_file(name: str) -> str | None:
    """The file that defines registry model ``name``: relative to the root for the library's
    models, an absolute path for a plugin's (an installed package outside the repository)."""
    import inspect

    from esolm import registry

    path = inspect.getsourcefile(registry.model_class(name))
    if not path:
        return None
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _imports_in(node: ast.AST) -> set[str]:
    """Library files named by the import statements inside ``node``."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and not n.level:
            names = [n.module] + [f"{n.module}.{a.name}" for a in n.names]
        elif isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        else:
            continue
        out |= {f for name in names if (f := module_file(name))}
    return out


def _called(defs: dict, function: str) -> set[str]:
    """``function`` and the functions of ``defs`` it names, transitively."""
    reached, todo = set(), [function]
    while todo:
        name = todo.pop()
        if name not in reached and name in defs:
            reached.add(name)
            todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs]
    return reached


def _jobs_defs() -> tuple[ast.Module, dict]:
    tree = ast.parse((ROOT / JOBS).read_text())
    return tree, {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def part_name(function: str) -> str:
    """The name a record gives the part of jobs.py that ``function`` runs."""
    return f"{JOBS}::{function}"


@functools.lru_cache(maxsize=None)
def part_hash(function: str) -> str:
    """Hash of the part of jobs.py that ``function`` runs: the module's statements other than
    function definitions (imports, constants) and the functions it calls, transitively, each
    without its docstring. A new stage function, or an edit to another stage's function,
    leaves it unchanged."""
    tree, defs = _jobs_defs()
    kept = [n for n in tree.body if not isinstance(n, ast.FunctionDef) or n.name in _called(defs, function)]
    part = ast.Module(body=kept, type_ignores=[])
    return _tree_hash(part)


def stage_files(function: str, models: tuple[str, ...]) -> list[str]:
    """The files a job runs: the part of jobs.py its stage function runs, the library modules
    imported by jobs.py's top level and by the jobs.py functions the stage calls (transitively),
    and the files of the models it builds."""
    tree, defs = _jobs_defs()
    top = {f for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for f in _imports_in(n)}
    direct = top | {f for name in _called(defs, function) for f in _imports_in(defs[name])}
    direct |= {f for m in models if (f := model_file(m))}
    return closure(direct) + [part_name(function)]


def _hash(path: str) -> str:
    if "::" in path:
        return part_hash(path.split("::", 1)[1])
    return file_hash(path)


def version(files: list[str]) -> tuple[str, dict[str, str]]:
    """(one hash of these files' code, the hash of each file or jobs.py part)."""
    per_file = {f: _hash(f) for f in files}
    blob = "".join(f"{f}:{h}\n" for f, h in sorted(per_file.items()))
    return content_hash(blob)[:12], per_file


def job_version(stage: str, models) -> tuple[str, dict[str, str]]:
    """The code version of a job of ``stage`` that builds or loads ``models``."""
    return version(stage_files(f"job_{stage}", tuple(sorted(set(models)))))


def library_version() -> str:
    """One hash of every library file and jobs.py (what summary.json reports for the whole run)."""
    files = sorted(str(p.relative_to(ROOT)) for d in LIBRARY for p in (ROOT / d).rglob("*.py")) + [JOBS]
    return version(files)[0]


def changed_files(recorded: dict[str, str] | None, current: dict[str, str]) -> list[str]:
    """Files whose code differs between a record's ``code_files`` and now (added or removed too)."""
    if not recorded:
        return []
    return sorted(f for f in set(recorded) | set(current) if recorded.get(f) != current.get(f))

