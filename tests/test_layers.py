"""The package's import layers, one home for the ImageNet statistics, and a cheap CLI start-up.

Why: a module may import only from its own layer or the layers below it, so each floor can be read, tested
and changed without the ones above it, and no import cycle can form between floors (a hidden one once ran
cli -> launch.submit -> launch.jobs -> cli through importlib). The order, top to bottom:

    cli -> launch -> ssl -> eval -> models -> data/config/checkpoint/distributed -> errors

``export.py`` (a command built on the evaluators' backbone loading) sits with ``eval``; ``pretrained.py``
(an exported backbone back through timm) and the package face ``container_ssl/__init__.py`` (which imports
the models to register them with timm) sit with ``models``; ``argtypes.py`` sits with ``config``; the
command table ``commands.py`` imports nothing and sits at the bottom with ``errors``. Its module paths are
read as imports of every module that imports the table (``cli`` and ``launch.jobs``).

Every module is read with ``ast``, not imported: module-level and function-level ``import`` and
``from ... import``, relative and absolute, and ``importlib.import_module("container_ssl...")`` calls.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "container_ssl"
COMMAND_TABLE = "container_ssl.commands"

# top to bottom; a module belongs to the layer of the longest name it starts with (the bare package name
# matches only the package face itself)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("container_ssl.cli", "container_ssl.__main__")),
    ("launch", ("container_ssl.launch",)),
    ("ssl", ("container_ssl.ssl",)),
    ("eval", ("container_ssl.eval", "container_ssl.export")),
    ("models", ("container_ssl.models", "container_ssl.pretrained", "container_ssl")),
    ("data/config/checkpoint/distributed", ("container_ssl.data", "container_ssl.config", "container_ssl.checkpoint",
                                            "container_ssl.distributed", "container_ssl.argtypes",
                                            "container_ssl.run")),
    ("errors", ("container_ssl.errors", "container_ssl.commands")),
]

# what neither the console script nor `container-ssl --help` / `report --help` may load
HEAVY = ("kornia", "omegaconf", "faiss", "submitit", "tensorboard", "matplotlib", "container_ssl.ssl.trainer",
         "container_ssl.launch")


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    path: str  # the importing file, relative to the repository
    line: int
    target: str  # the imported module of the package
    how: str  # "import", "from-import", "import_module" or "command table"


def package_sources(root: Path = REPO / PACKAGE) -> dict[str, tuple[str, str]]:
    """``{module name: (file relative to the repository, source)}`` for every ``.py`` file of the package."""
    out = {}
    for file in sorted(root.rglob("*.py")):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = (str(file.relative_to(root.parent)), file.read_text())
    return out


def layer_of(module: str) -> int | None:
    """Index into :data:`LAYERS` (0 = top), or None for a module no layer names."""
    best, best_len = None, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            hit = module == name or (name != PACKAGE and module.startswith(name + "."))
            if hit and len(name) > best_len:
                best, best_len = index, len(name)
    return best


def _is_package(path: str) -> bool:
    return path.endswith("__init__.py")


def imports_of(module: str, path: str, source: str, modules: set[str]) -> list[Import]:
    """Every import of a package module in one file, at any depth (functions, classes, ``if`` blocks)."""
    found = []
    here = module if _is_package(path) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found += [Import(module, path, node.lineno, a.name, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(module, path, node.lineno, sub if sub in modules else base, "from-import"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(module, path, node.lineno, node.args[0].value, "import_module"))
    found = [i for i in found if i.target == PACKAGE or i.target.startswith(PACKAGE + ".")]
    return list(dict.fromkeys(found))  # `from .x import a, b` is one import of .x


def command_table(source: str) -> dict[str, str]:
    """``{command: module path}`` read from the ``COMMANDS`` literal of the table module."""
    for node in ast.walk(ast.parse(source)):
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "COMMANDS" and isinstance(node.value, ast.Dict):
            return {ast.literal_eval(k): ast.literal_eval(v)[0] for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError("no COMMANDS = {...} literal in the command table")


def all_imports(sources: dict[str, tuple[str, str]]) -> list[Import]:
    """The imports of every module, plus the command table's paths as imports of each module that imports it."""
    modules = set(sources)
    found = [i for name, (path, src) in sources.items() for i in imports_of(name, path, src, modules)]
    if COMMAND_TABLE in sources:
        table = command_table(sources[COMMAND_TABLE][1])
        users = {(i.importer, i.path, i.line) for i in found if i.target == COMMAND_TABLE}
        found += [Import(user, path, line, target, "command table") for user, path, line in sorted(users)
                  for target in table.values()]
    return found


def violations(sources: dict[str, tuple[str, str]]) -> list[str]:
    """One line per import against the order (or of something that is not a module of the package)."""
    names = [name for name, _ in LAYERS]
    bad = []
    for imp in all_imports(sources):
        if imp.target not in sources:
            bad.append(f"{imp.path}:{imp.line}: {imp.how} of {imp.target}, which is not a module of the package")
            continue
        low, high = layer_of(imp.importer), layer_of(imp.target)
        if low is not None and high is not None and high < low:
            bad.append(f"{imp.path}:{imp.line}: {imp.how} of {imp.target} (layer '{names[high]}') from layer "
                       f"'{names[low]}': imports must run down {' -> '.join(names)}")
    return bad


# ---------------------------------------------------------------------------------------------- layers
def test_every_module_has_a_layer():
    unplaced = [f"{path} ({name})" for name, (path, _) in package_sources().items() if layer_of(name) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS in tests/test_layers.py): {unplaced}"


def test_imports_run_down_the_layers():
    bad = violations(package_sources())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_walk_sees_every_kind_of_import():
    """Known imports of each kind are found and resolved, so a broken walker cannot pass silently."""
    found = {(i.importer, i.target, i.how) for i in all_imports(package_sources())}
    for expected in [
        ("container_ssl.eval.options", "container_ssl.distributed", "from-import"),  # relative, module level
        ("container_ssl.ssl.trainer", "container_ssl.ssl.health", "from-import"),  # `from . import health`
        ("container_ssl.ssl.loader", "container_ssl.ssl.augment_gpu", "from-import"),  # inside a function
        ("container_ssl.models", "container_ssl.models.container", "from-import"),  # in a package's __init__
        ("container_ssl.cli", "container_ssl.ssl.pretrain_cli", "command table"),
        ("container_ssl.launch.jobs", "container_ssl.launch.submit", "command table"),
    ]:
        assert expected in found, f"the walk missed {expected}"


@pytest.mark.parametrize("importer, line, layer", [
    ("container_ssl.data.listing", "from ..ssl.trainer import pretrain", "ssl"),
    ("container_ssl.models.head", "    import container_ssl.eval.knn", "eval"),
    ("container_ssl.eval.knn", "from ..launch import jobs", "launch"),
    ("container_ssl.launch.jobs", "from .. import cli", "cli"),
    ("container_ssl.distributed", "importlib.import_module('container_ssl.models.head')", "models"),
])
def test_an_upward_import_is_named(importer, line, layer):
    sources = package_sources()
    path, source = sources[importer]
    body = f"def _late():\n{line}\n" if line.startswith(" ") else line + "\n"
    bad = violations({**sources, importer: (path, source + "\n" + body)})
    assert len(bad) == 1 and path in bad[0] and f"(layer '{layer}')" in bad[0], bad


def test_a_command_module_above_a_table_user_is_named():
    """A command module in a layer above ``launch`` would be an upward import of ``launch.jobs``."""
    sources = package_sources()
    path, table = sources[COMMAND_TABLE]
    table = table.replace('"container_ssl.export"', '"container_ssl.cli"')
    bad = violations({**sources, COMMAND_TABLE: (path, table)})
    assert bad and all("container_ssl/launch/jobs.py" in b and "(layer 'cli')" in b for b in bad), bad


def test_command_modules_exist_and_define_the_command():
    sources = package_sources()
    for command, module in command_table(sources[COMMAND_TABLE][1]).items():
        assert module in sources, f"command {command}: no module {module}"
        tree = ast.parse(sources[module][1])
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"configure_parser", "run"} <= defined, f"{module} lacks configure_parser/run"


def test_the_command_table_imports_nothing():
    tree = ast.parse(package_sources()[COMMAND_TABLE][1])
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports == ["from __future__ import annotations"]


# ------------------------------------------------------------------------------- ImageNet statistics
def test_imagenet_statistics_are_spelled_once():
    """The package writes the ImageNet mean/std nowhere itself: eval/transforms.py names timm's once."""
    from container_ssl.config import AugConfig
    from container_ssl.eval.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert AugConfig().mean == list(IMAGENET_MEAN) and AugConfig().std == list(IMAGENET_STD)
    normalize = EvalTransform(8).normalize.transforms[1]
    assert (normalize.mean, normalize.std) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    spelled = []
    for path, source in package_sources().values():
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts)
                    and [e.value for e in node.elts] in ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])):
                spelled.append(f"{path}:{node.lineno}")
    assert not spelled, f"ImageNet statistics written out again (import them from eval/transforms.py): {spelled}"


# ------------------------------------------------------------------------------------------- start-up
START_UP = """
import contextlib, io, json, sys
HEAVY = {heavy!r}
seen = {{}}
import container_ssl.cli as cli
seen["import container_ssl.cli"] = sorted(m for m in HEAVY if m in sys.modules)
for argv in (["--help"], ["report", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    assert code == 0, (argv, code)
    seen["container-ssl " + " ".join(argv)] = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps(seen))
"""


def test_cli_start_up_loads_no_training_or_evaluation_stack():
    """``import container_ssl.cli``, ``container-ssl --help`` and ``report --help`` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", START_UP.format(heavy=HEAVY)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen) == 3
    loaded = {stage: modules for stage, modules in seen.items() if modules}
    assert not loaded, f"heavy modules loaded at start-up: {loaded}"
