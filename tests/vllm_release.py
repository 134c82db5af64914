"""A vLLM release, read rather than run: is everything the runtime reaches for still there?

    python tests/vllm_release.py VERSION      (`make check-vllm VERSION=0.34.0`)

The release's wheel is downloaded without dependencies into the user's cache directory
(`~/.cache/aim-runtime/vllm-wheels`, never the repository) and its Python files are parsed, never
imported (the wheels on the package index are GPU builds). Checked against them:

- every module, name and attribute that `serving/vllm_adapter/` imports or reaches through an
  import (found in the adapter's own syntax tree), a fallback chain (the adapter's location tables,
  `getattr(module, name, None)` with its alternative) counting when one alternative exists;
- the keyword names of the adapter's calls into vLLM;
- the `vllm serve` destinations the runtime reads (`PARSER_DESTS_READ`, the listener's refused
  flags) among the release's parser arguments and `*Args` fields;
- every engine argument and `VLLM_*` variable the planner, the ROCm rules and the recipes emit,
  among the parser's destinations and the release's environment registry (`vllm/envs.py`).

Prints one line per problem and exits 1 if there is any. The test suite runs it for every release
of the supported window (tests/test_vllm_release.py); moving the window starts with this command
for the new release, which lists what moved.
"""

from __future__ import annotations

import ast
import functools
import itertools
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADAPTER = REPO / "runtime" / "aim_runtime" / "serving" / "vllm_adapter"  # the package


def wheel_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "aim-runtime" / "vllm-wheels"


def download(requirement: str) -> Path:
    """The wheel pip picks for `requirement` (e.g. "vllm==0.34.0" or "vllm>=0.33,<0.34"),
    downloaded once into the cache."""
    cache = wheel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "--dest", str(cache), requirement], capture_output=True, text=True, check=False)
    found = re.findall(r"(vllm-[0-9][^\s/]*\.whl)", result.stdout)
    if result.returncode != 0 or not found:
        raise SystemExit(f"pip could not download {requirement}:\n{result.stderr[-2000:]}")
    return cache / found[-1]


class Release:
    """A vLLM release's Python files, parsed on demand."""

    def __init__(self, wheel: Path) -> None:
        self.version = wheel.name.split("-")[1]
        with zipfile.ZipFile(wheel) as archive:
            self.files = {name: archive.read(name).decode("utf-8", "replace")
                          for name in archive.namelist()
                          if name.startswith("vllm/") and name.endswith(".py")}

    def path(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            if candidate in self.files:
                return candidate
        return None

    @functools.cache  # noqa: B019 (a Release lives as long as the check)
    def tree(self, module: str) -> ast.Module | None:
        path = self.path(module)
        return ast.parse(self.files[path]) if path else None

    def has(self, module: str, name: str) -> bool:
        """`module` defines, imports or lazily exports `name`, or has it as a submodule."""
        tree = self.tree(module)
        if tree is None:
            return False
        if name in top_level_names(tree) or self.path(f"{module}.{name}"):
            return True
        lazy = "__getattr__" in top_level_names(tree)
        return lazy and any(isinstance(node, ast.Constant) and node.value == name
                            for node in ast.walk(tree))

    def definition(self, module: str, name: str, hops: int = 4) -> ast.AST | None:
        """The def or class `name` of `module`, following re-exports (`from x import name`)."""
        tree = self.tree(module)
        if tree is None or hops == 0:
            return None
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and \
                    node.name == name:
                return node
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        return self.definition(node.module, alias.name, hops - 1)
        return None

    def members(self, module: str, name: str) -> set[str] | None:
        """Names a class defines, its vLLM bases' included; None when a base is not vLLM's
        (pydantic's BaseModel, enum.Enum: anything goes) or the class cannot be found."""
        node = self.definition(module, name)
        if not isinstance(node, ast.ClassDef):
            return None
        names = top_level_names(ast.Module(body=node.body, type_ignores=[]))
        for base in node.bases:
            base_name = base_name_of(base)
            if base_name in PLAIN_BASES:
                continue  # the standard library's: nothing a vLLM caller reaches for
            origin = base_name and self._imported_from(module, base_name)
            inherited = self.members(origin or module, base_name) if base_name else None
            if inherited is None:  # pydantic, msgspec, another library: anything goes
                return None
            names |= inherited
        return names

    def _imported_from(self, module: str, name: str) -> str | None:
        tree = self.tree(module)
        for node in tree.body if tree else []:
            if isinstance(node, ast.ImportFrom) and node.module and \
                    any((a.asname or a.name) == name for a in node.names):
                return node.module
        return None

    def parameters(self, module: str, dotted: str) -> set[str] | None:
        """Keyword names a callable takes; None when it takes any (**kwargs) or is unknown."""
        name, _, method = dotted.partition(".")
        node = self.definition(module, name)
        if isinstance(node, ast.ClassDef):
            found = self._method(module, node, method or "__init__")
            if found is None:
                return None if method else self._fields(node)
            node = found
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.args.kwarg:
            return None
        arguments = node.args
        return {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}

    def _method(self, module: str, node: ast.ClassDef, name: str) -> ast.AST | None:
        """The def `name` of a class or of its vLLM bases, nearest first."""
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == name:
                return item
        for base in node.bases:
            if isinstance(base, ast.Name):
                origin = self._imported_from(module, base.id) or module
                parent = self.definition(origin, base.id)
                found = self._method(origin, parent, name) if isinstance(parent, ast.ClassDef) \
                    else None
                if found is not None:
                    return found
        return None

    @staticmethod
    def _fields(node: ast.ClassDef) -> set[str] | None:
        fields = {n.target.id for n in node.body
                  if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        return fields or None

    @functools.cached_property
    def parser_dests(self) -> set[str]:
        """Every `vllm serve` destination: add_argument flags and dests, and the fields of the
        `*Args` classes that generate the parser (engine, front end)."""
        dests: set[str] = set()
        for path, source in self.files.items():
            if not (path.startswith("vllm/entrypoints/") or path == "vllm/engine/arg_utils.py"):
                continue
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Args"):
                    dests |= self._fields(node) or set()
                elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == \
                        "add_argument":
                    dests |= argument_dests(node)
        return dests

    @functools.cached_property
    def environment_variables(self) -> set[str]:
        tree = self.tree("vllm.envs")
        for node in tree.body if tree else []:
            target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
            if isinstance(target, ast.Name) and target.id == "environment_variables" and \
                    isinstance(node.value, ast.Dict):
                return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        return set()


# Bases from the standard library that give a class no members the runtime uses.
PLAIN_BASES = frozenset({"object", "ABC", "Generic", "Protocol", "str", "int", "Enum", "IntEnum",
                         "StrEnum", "Exception", "RuntimeError", "ValueError"})


def base_name_of(base: ast.expr) -> str | None:
    """`Base`, `enum.Enum` -> "Enum", `Generic[T]` -> "Generic"."""
    if isinstance(base, ast.Subscript):
        base = base.value
    if isinstance(base, ast.Attribute):
        return base.attr
    return base.id if isinstance(base, ast.Name) else None


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.If, ast.Try)):  # TYPE_CHECKING blocks, import fallbacks
            names |= top_level_names(ast.Module(body=node.body, type_ignores=[]))
    return names


def argument_dests(call: ast.Call) -> set[str]:
    dests = {keyword.value.value for keyword in call.keywords
             if keyword.arg == "dest" and isinstance(keyword.value, ast.Constant)}
    for argument in call.args:
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            dests.add(argument.value.lstrip("-").replace("-", "_"))
    return dests


# --- what the adapter needs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """One thing the runtime uses: `module` has `name`; and, if given, `name` has `member`, or
    `name` (a callable, `member` its method or empty) takes the keyword `keyword`."""

    module: str
    name: str
    member: str = ""
    keyword: str = ""

    def __str__(self) -> str:
        what = f"{self.module}.{self.name}" + (f".{self.member}" if self.member else "")
        return f"{what}(..., {self.keyword}=...)" if self.keyword else what

    def met_by(self, release: Release) -> bool:
        if not release.has(self.module, self.name):
            return False
        submodule = f"{self.module}.{self.name}"
        if self.keyword:
            if release.path(submodule):  # module.function(keyword=...)
                taken = release.parameters(submodule, self.member)
            else:
                taken = release.parameters(self.module, f"{self.name}.{self.member}".strip("."))
            return taken is None or self.keyword in taken
        if not self.member:
            return True
        if release.path(submodule):
            return release.has(submodule, self.member)
        members = release.members(self.module, self.name)
        return members is None or self.member in members


Chain = tuple[Need, ...]  # met when any one of them is


def read_adapter() -> str:
    """The adapter package's modules, one source (each module's uses are read alike)."""
    return "\n".join(path.read_text() for path in sorted(ADAPTER.glob("*.py")))


def adapter_needs(source: str) -> list[Chain]:
    """Every use of vLLM in the adapter's source, as chains of alternatives."""
    tree = ast.parse(source)
    chains: list[Chain] = [_table(node) for node in tree.body if _table(node)]
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            chains += _function_needs(function)
    return list(dict.fromkeys(chains))


def _table(node: ast.stmt) -> Chain:
    """A location table: NAME = (("vllm.module", "name"), ...)."""
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)):
        return ()
    pairs = [[e.value for e in item.elts if isinstance(e, ast.Constant)]
             for item in node.value.elts if isinstance(item, ast.Tuple)]
    if not pairs or not all(len(p) == 2 and str(p[0]).startswith("vllm") for p in pairs):
        return ()
    return tuple(Need(str(module), str(name)) for module, name in pairs)


def _function_needs(function: ast.AST) -> list[Chain]:
    bound: dict[str, tuple[str, str]] = {}  # local name -> (module, name); name "" = module
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vllm"):
            for alias in node.names:
                bound[alias.asname or alias.name] = (str(node.module), alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vllm"):
                    bound[alias.asname or alias.name.split(".")[0]] = (alias.name, "")
    chains: list[Chain] = [(Need(m, n),) for m, n in bound.values() if n]
    chains += [(Need(*m.rsplit(".", 1)),) for m, n in bound.values() if not n and "." in m]
    optional = _optional_lookups(function, bound)
    for node in ast.walk(function):
        if isinstance(node, ast.IfExp) and _names(node.test) & optional.keys():
            alternatives = [optional[v] for v in _names(node.test) & optional.keys()]
            alternatives += [need for sub in (node.body, node.orelse)
                             for need in _attribute_needs(sub, bound)]
            chains.append(tuple(alternatives))
    inside_fallbacks = {id(n) for node in ast.walk(function) if isinstance(node, ast.IfExp)
                        and _names(node.test) & optional.keys() for n in ast.walk(node)}
    for node in ast.walk(function):
        if id(node) in inside_fallbacks:
            continue
        if isinstance(node, ast.Attribute):
            chains += [(need,) for need in _attribute_needs(node, bound, recurse=False)]
        elif isinstance(node, ast.Call):
            chains += [(need,) for need in _keyword_needs(node, bound)]
    return chains


def _optional_lookups(function: ast.AST, bound: dict[str, tuple[str, str]]) -> dict[str, Need]:
    """`variable = getattr(vllm_module, "name", None)`: a lookup the code has a fallback for."""
    found = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", "") == "getattr" and len(node.value.args) == 3:
            owner, name = node.value.args[:2]
            if isinstance(owner, ast.Name) and owner.id in bound and \
                    isinstance(name, ast.Constant) and isinstance(node.targets[0], ast.Name):
                found[node.targets[0].id] = _member(bound[owner.id], str(name.value))
    return found


def _member(binding: tuple[str, str], attribute: str) -> Need:
    module, name = binding
    return Need(module, attribute) if not name else Need(module, name, attribute)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _attribute_needs(node: ast.AST, bound: dict[str, tuple[str, str]],
                     recurse: bool = True) -> Iterator[Need]:
    for candidate in ast.walk(node) if recurse else [node]:
        if not isinstance(candidate, ast.Attribute) or candidate.attr.startswith("__"):
            continue
        dotted = _dotted(candidate)
        if dotted is None or dotted[0] not in bound:
            continue
        module, name = bound[dotted[0]]
        if name and len(dotted) == 2:
            yield Need(module, name, dotted[1])
        elif not name and len(dotted) == len(module.split(".")) + 1:
            yield Need(module, dotted[-1])  # `import vllm.envs` then vllm.envs.X


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _keyword_needs(call: ast.Call, bound: dict[str, tuple[str, str]]) -> Iterator[Need]:
    dotted = _dotted(call.func)
    if dotted is None or dotted[0] not in bound or len(dotted) > 2:
        return
    module, name = bound[dotted[0]]
    if not name:
        return
    for keyword in call.keywords:
        if keyword.arg is not None:
            yield Need(module, name, dotted[1] if len(dotted) == 2 else "", keyword.arg)


# --- what the runtime emits and reads ------------------------------------------------------------


def emitted_settings() -> tuple[set[str], set[str]]:
    """(engine args, VLLM_* variables) that plans can carry: those of plans for the fixture
    models on each GPU family (one device and eight), of every ROCm rule, and of every recipe."""
    from aim_runtime.checkpoint.facts import load_model_facts
    from aim_runtime.errors import AimError
    from aim_runtime.hardware import detect
    from aim_runtime.planner import catalog, rocm
    from aim_runtime.planner.plan import make_plan

    library = catalog.load_catalog()
    args: set[str] = set()
    env: set[str] = set()
    for model in sorted((REPO / "tests" / "fixtures" / "models").iterdir()):
        facts = load_model_facts(model)
        for product, count in itertools.product(("MI300X", "MI355X", "MI250"), (1, 8)):
            try:
                plan = make_plan(detect(simulate=f"{product}:{count}", environ={}), facts,
                                 library)
            except AimError:  # does not fit: nothing emitted
                continue
            args |= set(plan.engine_args)
            env |= set(plan.env)
    for source in [*rocm.RULES, *library.recipes]:
        args |= set(source.engine_args)
        env |= set(source.env)
    return args - {"model"}, {name for name in env if name.startswith("VLLM_")}


def problems(release: Release, adapter_source: str | None = None) -> list[str]:
    from aim_runtime.serving import listener, vllm_adapter

    found = []
    for chain in adapter_needs(adapter_source or read_adapter()):
        if not any(need.met_by(release) for need in chain):
            found.append("vllm_adapter uses " + " or ".join(map(str, chain)))
    args, env = emitted_settings()
    read = set(vllm_adapter.PARSER_DESTS_READ) | set(listener.REFUSED)
    found += [f"the runtime reads `vllm serve`'s {dest!r}: no such argument"
              for dest in sorted(read - release.parser_dests)]
    found += [f"the planner emits the engine argument {name!r}: no such argument"
              for name in sorted(args - release.parser_dests)]
    found += [f"the planner emits {name}: not in vllm/envs.py's environment_variables"
              for name in sorted(env - release.environment_variables)]
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n", 2)[1], file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "runtime"))
    release = Release(download(f"vllm=={argv[0]}"))
    found = problems(release)
    for line in found:
        print(f"vllm {release.version}: {line}")
    print(f"vllm {release.version}: " + (f"{len(found)} problem(s)" if found else
                                         "every name the runtime uses resolves"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
