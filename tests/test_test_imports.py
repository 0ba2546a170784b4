"""No module under tests/ imports a test module (``test_*.py`` / ``*_test.py``).

Why: a test module is collected by pytest; importing it from another file runs its module-level code twice,
re-exports its fixtures and makes one file's tests depend on another's private helpers, so editing or
deleting a test breaks unrelated ones. What several files share lives in plain helper modules
(``tests/tiny.py``, ``tests/data/archive_builders.py``, ``tests/launch/sbatch_helpers.py``) or in fixtures
of a ``conftest.py``.

Every file is read with ``ast``, not imported: module-level and function-level ``import`` and
``from ... import``, absolute (``tests.x.y``, or a bare name found beside a file in a folder without
``__init__.py``, which pytest puts on ``sys.path``) and relative.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
TEST_FILES = ("test_*.py", "*_test.py")  # pytest's default python_files


def is_test_module(path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in TEST_FILES)


def _module_file(base: Path, dotted: str) -> Path | None:
    """``base/a/b.py`` or ``base/a/b/__init__.py`` for ``a.b``, when it exists."""
    path = base.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(file: Path, root: Path) -> list[tuple[int, Path]]:
    """``(line, file)`` for every import in ``file`` that resolves to a ``.py`` file under ``root``'s tests/."""
    roots = [root]  # `tests.x.y` from the repository root
    if not (file.parent / "__init__.py").is_file():
        roots.append(file.parent)  # pytest's rootdir insertion: `import eval_helpers` beside the file
    found = []
    for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
        names: list[str] = []
        bases: list[Path] = roots
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                bases = [file.parents[node.level - 1]]
            module = node.module or ""
            # `from pkg import mod` imports pkg and, when it is one, the module pkg.mod
            names = [module] * bool(module) + [f"{module}.{a.name}".lstrip(".") for a in node.names]
        for name in names:
            for base in bases:
                hit = _module_file(base, name)
                if hit is not None and (root / "tests") in hit.parents:
                    found.append((node.lineno, hit))
                    break
    return found


def violations(root: Path = REPO) -> list[str]:
    """One line per import of a test module by another file under ``root``'s tests/."""
    bad = []
    for file in sorted((root / "tests").rglob("*.py")):
        for line, target in imported_files(file, root):
            if is_test_module(target) and target != file:
                bad.append(f"{file.relative_to(root)}:{line}: imports the test module {target.relative_to(root)}; "
                           "move what it shares into a helper module or a conftest.py fixture")
    return sorted(set(bad))


def test_no_module_under_tests_imports_a_test_module():
    bad = violations()
    assert not bad, "\n".join(bad)


def test_the_walk_sees_every_kind_of_import_of_a_test_module(tmp_path):
    """Each kind of import of a test module is named, a helper import is not: the check can fail."""
    pkg = tmp_path / "tests" / "pkg"
    loose = tmp_path / "tests" / "loose"  # no __init__.py: pytest puts the folder itself on sys.path
    for folder in (pkg, loose):
        folder.mkdir(parents=True)
    for init in (tmp_path / "tests" / "__init__.py", pkg / "__init__.py"):
        init.write_text("")
    (pkg / "test_a.py").write_text("X = 1\n")
    (pkg / "helper.py").write_text("Y = 2\n")
    (loose / "test_b.py").write_text("Z = 3\n")
    importers = {
        "absolute.py": "from tests.pkg.test_a import X\n",
        "module.py": "import tests.pkg.test_a\n",
        "member.py": "from tests.pkg import test_a\n",
        "relative.py": "from .test_a import X\n",
        "late.py": "def f():\n    from tests.pkg.test_a import X\n",
    }
    for name, source in importers.items():
        (pkg / name).write_text(source)
    (pkg / "fine.py").write_text("from tests.pkg.helper import Y\nfrom .helper import Y\nimport json\n")
    (loose / "bare.py").write_text("from test_b import Z\n")
    bad = violations(tmp_path)
    named = sorted(line.split(":")[0] for line in bad)
    assert named == sorted([f"tests/pkg/{n}" for n in importers] + ["tests/loose/bare.py"]), bad
