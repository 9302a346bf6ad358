"""The layers, asserted: Site -> Wire, Worker -> Protocol -> Wire, and nothing between Site and Worker.

- the site (``platform/``) imports only ``btard_wire`` of the project's code, and a Django process that has
  imported every site module holds no torch, no hivemind and no ``worker_client`` module;
- ``btard_wire`` imports only the standard library, pydantic and cryptography;
- the protocol core (``worker_client/btard/``) imports only the standard library, torch, numpy, pydantic,
  cryptography and ``btard_wire``, and does no file or network I/O (the worker's key file lives in
  ``worker_client/identity.py``, the transports in ``worker_client/net`` and ``worker_client/transports``).

Each scanner is also run on a small synthetic module that breaks its rule, so a scanner that stopped
seeing violations would fail here rather than pass everything.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

PLATFORM = ROOT / "platform"
WIRE = ROOT / "btard_wire"
CORE = ROOT / "worker_client" / "btard"

# The project's own top-level packages: the site may import btard_wire and itself (its apps), nothing else.
PROJECT_PACKAGES = {"btard_wire", "worker_client", "benchmarks", "tests", "examples"}
WIRE_ALLOWED = {"pydantic", "cryptography", "btard_wire"}
CORE_ALLOWED = {"torch", "numpy", "pydantic", "cryptography", "btard_wire", "worker_client.btard"}

# Modules whose import means I/O (files, sockets, processes) in the protocol core.
IO_MODULES = {"socket", "ssl", "http", "urllib", "ftplib", "smtplib", "asyncio", "selectors", "subprocess",
              "shutil", "tempfile", "glob", "pathlib", "sqlite3", "pickle", "shelve", "io", "mmap", "fileinput",
              "websockets", "hivemind", "requests", "aiohttp"}
IO_CALLS = {"open", "print", "input", "breakpoint", "exec", "eval", "compile", "__import__"}
OS_IO = {"open", "fdopen", "remove", "unlink", "rename", "replace", "mkdir", "makedirs", "rmdir", "removedirs",
         "chmod", "chown", "write", "read", "listdir", "scandir", "walk", "stat", "lstat", "truncate", "link",
         "symlink", "system", "popen", "spawnl", "spawnv", "fork", "kill", "getcwd", "chdir", "environ", "getenv",
         "putenv"}
# Method names that are file I/O whatever the object (pathlib.Path, numpy arrays, tensors, files).
IO_METHODS = {"write_text", "write_bytes", "read_text", "read_bytes", "touch", "mkdir", "unlink", "rmdir",
              "tofile", "fromfile", "save", "load", "savez", "loadtxt", "savetxt", "symlink_to", "hardlink_to"}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _module_of(path: Path, root: Path, prefix: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([p for p in [prefix, *parts] if p])


def _imports(path: Path, package: str):
    """Every import of ``path`` (module level or inside functions) as (line, absolute dotted name).
    ``package`` is the dotted package the file belongs to (for relative imports); relative imports that
    climb out of the top-level package come back with a leading ``..``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or ""
                continue
            base = package.split(".") if package else []
            if node.level - 1 > len(base) - 1:  # climbs out of the top-level package
                for name in ([node.module] if node.module else [alias.name for alias in node.names]):
                    yield node.lineno, "." * node.level + name
                continue
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # ``from . import x``: x is a module of the package (or a name in it)
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


def _allowed(name: str, allowed: set[str]) -> bool:
    root = name.split(".")[0]
    if root in sys.stdlib_module_names:
        return True
    return any(name == a or name.startswith(a + ".") for a in allowed)


def import_violations(files: list[Path], *, root: Path, prefix: str, allowed: set[str],
                      forbid_stdlib: set[str] = frozenset()) -> list[Violation]:
    """Imports of ``files`` outside the standard library and ``allowed`` (dotted prefixes), plus any
    import of a module in ``forbid_stdlib``."""
    found = []
    for path in files:
        module = _module_of(path, root, prefix)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for line, name in _imports(path, package):
            rel = str(path.relative_to(root.parent if prefix else root))
            if name.split(".")[0] in forbid_stdlib:
                found.append(Violation(rel, line, f"imports {name} (I/O)"))
            elif not _allowed(name, allowed):
                found.append(Violation(rel, line, f"imports {name}"))
    return found


def io_violations(files: list[Path], *, root: Path) -> list[Violation]:
    """Calls that do file, network or process I/O: ``open(...)``, ``os.remove(...)``, ``path.write_text(...)``,
    ``torch.save(...)``..."""
    found = []
    for path in files:
        rel = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_CALLS:
                found.append(Violation(rel, node.lineno, f"calls {node.func.id}()"))
            elif isinstance(node, ast.Attribute):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id == "os" and node.attr in OS_IO:
                    found.append(Violation(rel, node.lineno, f"uses os.{node.attr}"))
                elif isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) and \
                        owner.value.id == "os" and owner.attr == "path":
                    found.append(Violation(rel, node.lineno, f"uses os.path.{node.attr}"))
                elif node.attr in IO_METHODS:
                    found.append(Violation(rel, node.lineno, f"calls .{node.attr}()"))
    return found


def _py_files(folder: Path, *, skip: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if not any(part in skip for part in p.relative_to(folder).parts))


def site_files() -> list[Path]:
    return _py_files(PLATFORM, skip=("migrations", "tests", "__pycache__"))


# --- the site ---------------------------------------------------------------------------------------------

SITE_IMPORT_SCRIPT = """
import importlib, json, pathlib, sys
import django
django.setup()
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:  # report, do not hide: an unimportable module is a failure too
        failed[name] = repr(exc)[:300]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "hivemind"))
worker = sorted(m for m in sys.modules if m == "worker_client" or m.startswith("worker_client."))
print(json.dumps({"failed": failed, "heavy": heavy[:20], "worker": worker, "count": len(sys.argv) - 1}))
"""


def _site_modules() -> list[str]:
    names = [_module_of(p, PLATFORM, "") for p in site_files()]
    return [n for n in names if n]


def test_importing_every_site_module_after_django_setup_loads_no_torch_hivemind_or_worker_client():
    modules = _site_modules()
    assert "runs.checkpoints" in modules and "live.consumers" in modules and "btard_site.asgi" in modules
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="btard_site.settings", PYTHONPATH=f"{PLATFORM}{os.pathsep}{ROOT}")
    out = subprocess.run([sys.executable, "-c", SITE_IMPORT_SCRIPT, *modules], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["count"] == len(modules)
    assert report["failed"] == {}, report["failed"]
    assert report["heavy"] == [], f"the site loaded {report['heavy']}"
    assert report["worker"] == [], f"the site loaded {report['worker']}"


def test_the_site_imports_no_project_code_but_btard_wire_not_even_inside_a_function():
    found = []
    for path in site_files():
        for line, name in _imports(path, ""):
            root = name.split(".")[0]
            if root in PROJECT_PACKAGES - {"btard_wire"}:
                found.append(Violation(str(path.relative_to(ROOT)), line, f"imports {name}"))
    assert found == [], "\n".join(map(str, found))


# --- the wire package -------------------------------------------------------------------------------------

def test_btard_wire_imports_only_the_standard_library_pydantic_and_cryptography():
    files = _py_files(WIRE, skip=("__pycache__",))
    assert WIRE / "envelope.py" in files and WIRE / "json.py" in files
    found = import_violations(files, root=WIRE, prefix="btard_wire", allowed=WIRE_ALLOWED)
    assert found == [], "\n".join(map(str, found))


# --- the protocol core ------------------------------------------------------------------------------------

def test_the_protocol_core_imports_only_stdlib_torch_numpy_pydantic_cryptography_and_the_wire():
    files = _py_files(CORE, skip=("__pycache__",))
    assert len(files) >= 5
    found = import_violations(files, root=CORE, prefix="worker_client.btard", allowed=CORE_ALLOWED,
                              forbid_stdlib=IO_MODULES)
    assert found == [], "\n".join(map(str, found))


def test_the_protocol_core_does_no_file_or_network_io():
    found = io_violations(_py_files(CORE, skip=("__pycache__",)), root=ROOT)
    assert found == [], "\n".join(map(str, found))


# Module-level state that would be shared by every peer of a process: a cache keyed by anything but a plain
# value, a mutable container filled at run time, a ``global`` rebinding. Registries built once at import
# (a dict display of classes) are constants; ``functools.cache`` on a function of ints only is a table.
MUTABLE_FACTORIES = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "WeakKeyDictionary",
                     "WeakValueDictionary", "Counter"}
CACHE_DECORATORS = {"cache", "lru_cache"}


def global_state_violations(files: list[Path], *, root: Path) -> list[Violation]:
    """Module-global caches and run-time state: ``global`` statements, module-level empty mutable containers
    (``{}``, ``[]``, ``dict()``, ``OrderedDict()``...), and ``functools.cache``/``lru_cache`` on a function
    with a parameter that is not annotated ``int``."""
    found = []
    for path in files:
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                found.append(Violation(rel, node.lineno, f"global {', '.join(node.names)}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for dec in node.decorator_list:
                    target = dec.func if isinstance(dec, ast.Call) else dec
                    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                    if name in CACHE_DECORATORS and not all(
                            a.annotation is not None and ast.unparse(a.annotation) in ("int", "tuple[int, ...]")
                            for a in args):
                        found.append(Violation(rel, node.lineno, f"cache on {node.name}()"))
        for node in tree.body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if value is None:
                continue
            empty = isinstance(value, (ast.Dict, ast.List, ast.Set)) and not (
                getattr(value, "keys", None) or getattr(value, "elts", None))
            call = (isinstance(value, ast.Call) and not value.args and not value.keywords
                    and (getattr(value.func, "id", None) or getattr(value.func, "attr", None)) in MUTABLE_FACTORIES)
            if empty or call:
                found.append(Violation(rel, node.lineno, f"module-level {ast.unparse(value)}"))
    return found


def test_the_protocol_core_keeps_no_module_global_caches_or_state():
    """Peers of one process share nothing through the core's modules: what a simulator shares (decoded
    aggregates, projections, fixed-point checks) is a ``Memo`` it injects."""
    files = _py_files(CORE, skip=("__pycache__",))
    assert CORE / "peer.py" in files and CORE / "checks.py" in files and CORE / "court.py" in files
    found = global_state_violations(files, root=ROOT)
    assert found == [], "\n".join(map(str, found))


# --- the scanners themselves ------------------------------------------------------------------------------

BAD_CORE_MODULE = """
import os
import socket
from pathlib import Path

import django
from hivemind import P2P
from worker_client.runner import BtardWorker
from ..net import wire
from . import aggregators
from .tensors import tensor_to_bytes


def leak(identity):
    with open("key", "wb") as fh:
        fh.write(identity.private_bytes())
    os.chmod("key", 0o600)
    Path("x").write_text("y")
    os.path.exists("x")
    import torch
    torch.save({}, "state.pt")
"""

GOOD_CORE_MODULE = """
import hashlib
import os

import numpy as np
import torch
from pydantic import BaseModel

from btard_wire.envelope import Envelope
from . import aggregators
from .tensors import tensor_to_bytes


def entropy(n):
    return os.urandom(n) + hashlib.sha256(b"x").digest()
"""


@pytest.fixture
def fake_core(tmp_path):
    core = tmp_path / "btard"
    core.mkdir()
    (core / "__init__.py").write_text("")
    return core


def test_the_core_scanners_flag_every_kind_of_violation_in_a_synthetic_module(fake_core):
    (fake_core / "bad.py").write_text(textwrap.dedent(BAD_CORE_MODULE))
    files = [fake_core / "bad.py"]
    imports = {v.what for v in import_violations(files, root=fake_core, prefix="worker_client.btard",
                                                 allowed=CORE_ALLOWED, forbid_stdlib=IO_MODULES)}
    assert imports == {"imports socket (I/O)", "imports pathlib (I/O)", "imports django",
                       "imports hivemind (I/O)", "imports worker_client.runner", "imports worker_client.net"}
    io = {v.what for v in io_violations(files, root=fake_core)}
    assert io == {"calls open()", "uses os.chmod", "calls .write_text()", "uses os.path.exists", "calls .save()"}


CACHING_CORE_MODULE = """
import functools
from collections import OrderedDict

_DECODED = {}
_Z_CACHE = OrderedDict()
REGISTRY = {"a": 1}
_COUNT = 0


@functools.lru_cache(maxsize=4)
def projection(r: bytes, numel: int):
    return r * numel


@functools.cache
def network(n: int) -> tuple:
    return tuple(range(n))


def bump():
    global _COUNT
    _COUNT += 1
"""


def test_the_global_state_scanner_flags_caches_containers_and_globals_but_not_constants(fake_core):
    (fake_core / "caching.py").write_text(textwrap.dedent(CACHING_CORE_MODULE))
    found = {v.what for v in global_state_violations([fake_core / "caching.py"], root=fake_core)}
    assert found == {"module-level {}", "module-level OrderedDict()", "cache on projection()", "global _COUNT"}


def test_the_core_scanners_pass_a_module_that_keeps_the_rules(fake_core):
    (fake_core / "good.py").write_text(textwrap.dedent(GOOD_CORE_MODULE))
    files = [fake_core / "good.py"]
    assert import_violations(files, root=fake_core, prefix="worker_client.btard", allowed=CORE_ALLOWED,
                             forbid_stdlib=IO_MODULES) == []
    assert io_violations(files, root=fake_core) == []
    assert global_state_violations(files, root=fake_core) == []


def test_the_wire_scanner_flags_torch_numpy_and_a_climb_out_of_the_package(tmp_path):
    wire = tmp_path / "btard_wire"
    wire.mkdir()
    (wire / "__init__.py").write_text("")
    (wire / "bad.py").write_text("import json\nimport numpy\nfrom torch import nn\nfrom .. import worker_client\n"
                                 "from .errors import ProtocolError\nfrom pydantic import BaseModel\n")
    found = {v.what for v in import_violations([wire / "bad.py"], root=wire, prefix="btard_wire",
                                               allowed=WIRE_ALLOWED)}
    assert found == {"imports numpy", "imports torch", "imports ..worker_client"}


def test_the_site_check_fails_when_a_site_module_pulls_in_torch(tmp_path):
    """The subprocess check itself: a site module that imports torch is reported as heavy."""
    (tmp_path / "leaky.py").write_text("import torch\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="btard_site.settings",
               PYTHONPATH=os.pathsep.join([str(PLATFORM), str(ROOT), str(tmp_path)]))
    out = subprocess.run([sys.executable, "-c", SITE_IMPORT_SCRIPT, "runs.services", "leaky"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "torch" in report["heavy"] and report["failed"] == {}
