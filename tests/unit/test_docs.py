"""The documents stay true: README.md's length, every repository path and link they name, the add-a-family checklist
of ARCHITECTURE.md, and the rules it promises (shared code imports no family and probes no model with ``hasattr``).

Fast and light: text, YAML and ``ast`` only; nothing of gentrain (or torch) is imported. The helpers take the
repository root, so they can be pointed at a copy.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MAX_README_LINES = 250
#: The documents whose paths and links are checked.
DOCUMENTS = ["README.md", "ARCHITECTURE.md", "docs/configuration.md", "docs/evaluation.md", "docs/reproducing.md",
             "docs/scaling.md", "docs/extending.md", "docs/gans.md", "docs/autoregressive.md"]
#: Backticked text that starts with one of these is a path into the repository.
REPO_PREFIXES = ("gentrain/", "configs/", "tests/", "benchmarks/", "docs/")
#: Characters of placeholders, globs, alternatives and shell words: such a span names no single file.
NOT_A_PATH = set("<>*{}|$ ")
#: Output folders a run creates: named in the documents, never in the repository.
OUTPUT_PREFIXES = ("outputs/", "multirun/", "dist/", "mlruns/", "data/")
#: Endings of file names that look like dotted names (``gentrain.log``).
FILE_SUFFIXES = {"log", "lock", "md", "json", "jsonl", "yaml", "csv", "png", "pt", "npz", "whl"}
#: Attribute names that are model capabilities: shared code finds them by type (``isinstance``), never by name.
CAPABILITY_WORDS = {"log_prob", "log_likelihood", "likelihood_kind", "num_classes", "sample_of_labels", "encode", "decode",
                    "interpolate", "set_sampler"}


# ---- reading the documents -------------------------------------------------------------------------------------------
def prose(text: str) -> str:
    """``text`` without its fenced code blocks (commands and examples there name outputs and placeholders)."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.M | re.S)


def spans(text: str) -> list[str]:
    """The inline code spans of ``text``'s prose."""
    return re.findall(r"`([^`\n]+)`", prose(text))


def repo_paths(text: str) -> list[str]:
    """Backticked paths into the repository, less placeholders, globs and output paths."""
    found = []
    for span in spans(text):
        span = span.strip()
        if span.startswith(REPO_PREFIXES) and not NOT_A_PATH & set(span) and not span.startswith(OUTPUT_PREFIXES):
            found.append(span.rstrip(".,;:"))
    return found


def dotted_names(text: str) -> list[str]:
    """Backticked dotted names in gentrain (``gentrain.engine.loggers.Backend``), less placeholders."""
    return [s for s in spans(text) if re.fullmatch(r"gentrain(\.[A-Za-z_]\w*)+", s) and s.rsplit(".", 1)[-1] not in FILE_SUFFIXES]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation (backticks too) dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(path.read_text()), flags=re.M)}


def links(text: str) -> list[str]:
    """Targets of the markdown links of ``text``'s prose that stay in the repository."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", prose(text)) if not re.match(r"[a-z]+:", t)]


def section(text: str, heading: str) -> str:
    found = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert found, f"no '## {heading}' section"
    return found.group(1)


def bullets(text: str) -> list[str]:
    """The list items of ``text``'s prose that start a line (``- ...``), each with its indented continuation lines."""
    items: list[str] = []
    open_item = False
    for line in prose(text).splitlines():
        if line.startswith("- "):
            items.append(line[2:])
            open_item = True
        elif open_item and line.startswith((" ", "\t")) and line.strip():
            items[-1] += " " + line.strip()
        else:
            open_item = False
    return items


# ---- reading the code ------------------------------------------------------------------------------------------------
def families(root: Path) -> list[Path]:
    """The family folders, ``gentrain/families/<family>/``."""
    return sorted(d for d in (root / "gentrain" / "families").iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))


def shared_modules(root: Path) -> list[Path]:
    """Every module of gentrain outside ``gentrain/families/``."""
    families_dir = root / "gentrain" / "families"
    return sorted(p for p in (root / "gentrain").rglob("*.py") if families_dir not in p.parents)


def module_name(root: Path, path: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative imports resolved; ``from a import b`` gives a.b too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def is_family(module: str) -> bool:
    return module == "gentrain.families" or module.startswith("gentrain.families.")


def model_probes(path: Path) -> list[tuple[int, str]]:
    """``hasattr``/``getattr`` calls that find out what a model can do by name: ``hasattr(model, ...)``, a
    ``getattr(model, "name")`` or ``getattr(model, ..., default)``, or either one asking for a capability's name."""

    def is_model(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "model") or (isinstance(node, ast.Attribute) and node.attr == "model")

    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") and node.args):
            continue
        args = node.args
        named = args[1].value if len(args) > 1 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str) else None
        probe = (
            (node.func.id == "hasattr" and is_model(args[0]))
            or (node.func.id == "getattr" and is_model(args[0]) and (named is not None or len(args) > 2))
            or named in CAPABILITY_WORDS
        )
        if probe:
            found.append((node.lineno, ast.unparse(node)))
    return found


def defines(path: Path, name: str) -> bool:
    """Whether module ``path`` defines ``name`` at its top level (a class, function, assignment or import)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name.split(".")[0]) == name for a in node.names):
            return True
    return False


def resolves(root: Path, dotted: str) -> bool:
    """Whether ``gentrain.a.b.Name[.attr]`` is a package, a module, or a name a module defines."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:i])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = parts[i:]
            return not rest or (len(rest) <= 2 and defines(module, rest[0]))
    return False


def yaml_targets(root: Path, group: str) -> dict[str, str]:
    """``_target_`` of each ``configs/<group>/*.yaml`` that names one itself."""
    targets = {}
    for path in sorted((root / "gentrain" / "configs" / group).glob("*.yaml")):
        node = yaml.safe_load(path.read_text()) or {}
        if isinstance(node.get("_target_"), str):
            targets[path.stem] = node["_target_"]
    return targets


def checklist(root: Path) -> list[list[str]]:
    """The required files of ARCHITECTURE.md's ``## Add a family``: one list of alternatives per item that names
    ``gentrain/families/<family>/...`` paths (items marked optional left out)."""
    text = section((root / "ARCHITECTURE.md").read_text(), "Add a family")
    required = []
    for item in bullets(text):
        if item.lower().startswith("optional"):
            continue
        paths = [s for s in spans(item) if s.startswith("gentrain/families/<family>/")]
        if paths:
            required.append(paths)
    return required


# ---- the tests -------------------------------------------------------------------------------------------------------
def test_the_readme_is_at_most_250_lines():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}); move detail into docs/"


def test_every_document_exists_and_the_readme_links_each():
    readme = (ROOT / "README.md").read_text()
    for name in DOCUMENTS[1:]:
        assert (ROOT / name).is_file(), name
        assert f"]({name}" in readme, f"README.md does not link {name}"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_repository_path_a_document_names_exists(name):
    text = (ROOT / name).read_text()
    missing = [p for p in repo_paths(text) if not (ROOT / p).exists()]
    assert not missing, f"{name} names paths that do not exist: {missing}"
    unknown = [d for d in dotted_names(text) if not resolves(ROOT, d)]
    assert not unknown, f"{name} names modules or classes that do not exist: {unknown}"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_link_of_a_document_resolves_with_its_anchor(name):
    path = ROOT / name
    broken = []
    for target in links(path.read_text()):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or ROOT.resolve() not in (dest, *dest.parents):
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{name} has broken links: {broken}"


def test_the_add_a_family_checklist_holds_for_every_family():
    required = checklist(ROOT)
    assert len(required) >= 3, f"ARCHITECTURE.md's checklist names too few gentrain/families/<family>/ files: {required}"
    assert "edits no shared file" in section((ROOT / "ARCHITECTURE.md").read_text(), "Add a family")
    found = families(ROOT)
    assert {"gan", "vae", "flows", "autoregressive", "diffusion"} <= {f.name for f in found}
    for family in found:
        for alternatives in required:
            files = [ROOT / p.replace("<family>", family.name) for p in alternatives]
            assert any(f.is_file() for f in files), f"gentrain/families/{family.name} has none of {alternatives}"


def test_every_model_and_objective_yaml_of_gentrain_points_into_a_family_folder():
    names = {f.name for f in families(ROOT)}
    for group in ("model", "objective"):
        targets = yaml_targets(ROOT, group)
        assert targets, group
        used = set()
        for option, target in targets.items():
            if not target.startswith("gentrain."):
                continue  # a user's own class
            parts = target.split(".")
            assert parts[:2] == ["gentrain", "families"] and parts[2] in names, (
                f"configs/{group}/{option}.yaml: _target_ {target} is not in gentrain.families.<family>"
            )
            assert resolves(ROOT, target), f"configs/{group}/{option}.yaml: _target_ {target} names no class"
            used.add(parts[2])
        assert used == names, f"families without a {group} YAML: {sorted(names - used)}"


def test_shared_code_imports_no_family():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in shared_modules(ROOT) for line, module in imported_modules(ROOT, path) if is_family(module)
    ]
    named = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for path in shared_modules(ROOT) for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("gentrain.families")
    ]
    assert not found + named, f"shared code reaches into a family (a family reaches a run through its YAMLs): {found + named}"


def test_shared_code_asks_models_by_type_not_by_hasattr():
    found = [f"{path.relative_to(ROOT)}:{line}: {call}" for path in shared_modules(ROOT) for line, call in model_probes(path)]
    assert not found, f"shared code probes a model by attribute name; use the capability types (isinstance): {found}"


def test_the_blocks_other_tests_execute_are_where_they_read_them():
    api = section((ROOT / "README.md").read_text(), "Python API")
    assert re.search(r"```python\n.*?```", api, flags=re.S), "README.md: no ```python block under '## Python API' (tests/integration/test_api.py)"
    evaluation = (ROOT / "docs" / "evaluation.md").read_text()
    assert re.search(r"<!-- fidelity-crosscheck -->\s*```python\n.*?```\s*<!-- /fidelity-crosscheck -->", evaluation, flags=re.S), (
        "docs/evaluation.md: no fidelity-crosscheck block (tests/unit/test_fidelity_crosscheck.py)"
    )
