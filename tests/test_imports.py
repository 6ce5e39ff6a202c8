"""Dependencies run one way (docs/architecture.md): the model packages (tokenizers_ae < audio_codec <
latent_diffusion) < eval < train < eval.bench < aetk, with no cycle between modules; read with ast,
nothing executed. And an import inside a function defers a heavy or optional dependency, saying so."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["tokenizers_ae", "audio_codec", "latent_diffusion", "eval", "train", "eval.bench", "aetk"]
"""Lowest first: a module may import its own layer or a lower one, never a higher one."""
DEFERRING = ("train/families/", "aetk/")
"""Modules that import the project's heavy modules inside their hooks and verbs by design, so a
recipe is validated and `aetk --help` answers before torch loads (see their module docstrings)."""


def modules(root: Path = REPO) -> dict[str, Path]:
    out = {}
    for pkg in ("tokenizers_ae", "audio_codec", "latent_diffusion", "eval", "train", "aetk"):
        for path in sorted((root / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def layer(module: str) -> int:
    """Index in LAYERS of the longest layer name that prefixes `module`."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS.index(best)


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges[name].add(t)
    return edges


def back_edges(mods: dict[str, Path]) -> list[str]:
    return [f"{m} imports {t}" for m, ts in sorted(imports(mods).items()) for t in sorted(ts) if layer(t) > layer(m)]


def cycles(mods: dict[str, Path]) -> list[str]:
    edges = imports(mods)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                found.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [m])
    return found


def test_no_module_imports_a_higher_layer():
    bad = back_edges(modules())
    assert bad == [], "\n".join(bad)


def test_no_import_cycle():
    found = cycles(modules())
    assert found == [], "\n".join(found)


def test_the_checker_sees_back_edges_and_cycles(tmp_path):
    """On a made-up tree with one back edge and one cycle, the checks above find exactly those."""
    files = {"tokenizers_ae/__init__.py": "", "tokenizers_ae/a.py": "from train.loop import x\n",
             "train/__init__.py": "", "train/loop.py": "def f():\n    import train.run  # late\n",
             "train/run.py": "from train import loop\n", "eval/__init__.py": "", "eval/bench/__init__.py": "",
             "eval/bench/b.py": "import tokenizers_ae.a\nfrom train.run import y\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    mods = modules(tmp_path)
    assert back_edges(mods) == ["tokenizers_ae.a imports train.loop"]
    assert cycles(mods) == ["train.loop -> train.run -> train.loop"]


def function_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, imported module, the source line) of every import inside a function."""
    out = []
    for path in modules().values():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    out.append((str(path.relative_to(REPO)), node.lineno, mod or "", lines[node.lineno - 1]))
    return out


@pytest.mark.parametrize("where", ["project", "third-party"])
def test_imports_inside_functions_say_why(where):
    """An import inside a function is in a module that defers loading by design (family hooks, CLI
    verbs: see DEFERRING) or carries a comment naming why (a heavy or optional dependency, a child
    process whose memory is measured)."""
    own = ("tokenizers_ae", "audio_codec", "latent_diffusion", "eval", "train", "aetk")
    bad = []
    for path, line, mod, text in function_imports():
        is_own = mod.split(".")[0] in own
        if (where == "project") != is_own:
            continue
        excused = "#" in text or path.startswith(DEFERRING)
        if not excused:
            bad.append(f"{path}:{line}: {text.strip()}")
    assert bad == [], "\n".join(bad)
