"""The README's rule on imports, checked on the code: each module imports (at module level) only from its own layer
or the ones below it, and no module imports an entry point."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"train", "predict", "bench"}
# the README's layers, lowest first: a module's layer is that of its longest listed prefix
LAYERS = [("model", "ssmlora"),                                        # the core: torch and each other only
          ("data", "files", "baselines", "reproduce.authors", "mamba"),  # what the core is fed with and adapted by
                                                                       # (mamba: a base model and SDT, docs/mamba.md)
          ("tasks", "interop"),                                         # interop.export is a command (below)
          ("training",),                                               # what the loop stands on
          ("interop.export", "reproduce"),                             # the `python -m` commands
          tuple(ENTRY_POINTS)]


def layer(module):
    best = max((p for ps in LAYERS for p in ps if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, ps in enumerate(LAYERS) if best in ps)


def modules():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".git") or rel.parts[0].startswith("."):
            continue
        yield ".".join(rel.with_suffix("").parts).removesuffix(".__init__"), path


def imports(module, path):
    """Our modules that `module` imports at module level (an import inside a function loads only when called)."""
    ours = {m for m, _ in modules()}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module if not node.level else ".".join(module.split(".")[:-node.level] + [node.module or ""])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in ours else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in ours:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def test_imports_run_one_way():
    against = [(m, i) for m, path in modules() for i in set(imports(m, path))
               if i in ENTRY_POINTS or layer(i) > layer(m)]
    assert against == []
    core = {i for m in ("model", "ssmlora") for i in imports(m, ROOT / f"{m}.py")}
    assert core <= {"model"}  # ssmlora.py imports model.py; the core imports nothing else of ours
