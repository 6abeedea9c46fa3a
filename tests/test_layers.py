"""The package's shape: an import DAG with nn/ and train/ below integration/, old module paths, reversible registration,
and a stock model built by another thread while a TOOD model is being built."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel

import yolo_tood  # noqa: F401  (installed .pth imports it too; explicit for runs from a source tree)
from yolo_tood.nn.head import TOODDetect

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "yolo_tood"
TOOD_YAML = ROOT / "cfg" / "yolov8-tood.yaml"
STOCK_YAML = Path(__import__("ultralytics").__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def dynamic_imports(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The yolo_tood modules an ``import_module(...)`` call names: a string literal, or every module under the literal
    prefix of an f-string (``import_module(f"yolo_tood.tools.commands.{name}")``)."""
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "import_module"):
        return set()
    arg = node.args[0] if node.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = arg.values[0].value
        return {m for m in modules if m.startswith(prefix) and m != prefix.rstrip(".")}
    return set()


def import_graph() -> dict[str, set[str]]:
    """Return module -> yolo_tood modules it imports anywhere (module level or inside functions), from the AST.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module; ``import_module`` calls count
    (``dynamic_imports``). Parent packages imported implicitly by Python are not edges: only what a module names.
    """
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            edges |= dynamic_imports(node, modules)
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                    )
                for a in node.names:
                    edges.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a list of modules, or None for a DAG (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


PLUGIN = ("yolo_tood.nn", "yolo_tood.train", "yolo_tood.integration")  # what `yolo train` runs
# The yolo-tood command and its analyses, and the analyses' path before the layer folders (the tools serve it)
TOOLS = ("yolo_tood.tools", "yolo_tood.diagnostics")
TOOLS_NAME = re.compile(r"\b(?:" + "|".join(map(re.escape, TOOLS)) + r")\b")


def plugin_closure(graph: dict[str, set[str]]) -> dict[str, str]:
    """Return every module the plug-in imports, its own modules and those they reach through any other module
    (yolo_tood/__init__, checks, data), each mapped to the module it is first reached from."""
    plugin = [m for m in graph if m.startswith(PLUGIN) or m in ("yolo_tood", "yolo_tood.checks")]
    reached = {m: m for m in plugin}
    todo = list(plugin)
    while todo:
        m = todo.pop()
        for e in sorted(graph[m] - reached.keys()):
            reached[e] = m
            todo.append(e)
    return reached


def tools_names(source: str) -> list[tuple[int, str]]:
    """Return the string literals of a module's source that name a module of the tools, with their lines."""
    nodes = ast.walk(ast.parse(source))
    return [(n.lineno, n.value) for n in nodes if isinstance(n, ast.Constant) and TOOLS_NAME.search(str(n.value))]


def test_imports_form_a_dag_with_layers():
    graph = import_graph()
    assert "yolo_tood.nn.head" in graph and graph["yolo_tood.train.loss"] >= {"yolo_tood.train.hyp"}  # parsed
    assert graph["yolo_tood.tools.cli"] >= {"yolo_tood.tools.commands.compare"}  # import_module(f"...") is read
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    for name, edges in graph.items():
        if name.startswith(("yolo_tood.nn.", "yolo_tood.train.")):
            upward = {e for e in edges if e.startswith(("yolo_tood.integration", *TOOLS))}
            assert not upward, f"{name} imports {sorted(upward)} (nn/ and train/ must not import integration/tools)"
        if name.startswith("yolo_tood.nn."):
            assert not any(e.startswith("yolo_tood.train") for e in edges), f"{name} imports train/"


def test_the_plugin_imports_nothing_from_the_tools():
    """Not even through a module outside both (yolo_tood/__init__, checks, data): no path from the plug-in reaches
    the tools."""
    tools = {m: via for m, via in plugin_closure(import_graph()).items() if m.startswith(TOOLS)}
    assert not tools, "the plug-in reaches " + ", ".join(f"{m} (through {via})" for m, via in sorted(tools.items()))


def test_the_plugin_names_no_module_of_the_tools():
    """Not in a string either: a name in a string (an alias table, ``import_module`` of a computed name, pickle's
    ``find_class``) is an import the graph above cannot see. Docstrings count: the plug-in's own documentation has no
    business pointing at the tools' modules."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    named = [
        f"{modules[m].relative_to(ROOT)}:{line} {text!r}"
        for m in sorted(plugin_closure(import_graph()))
        if not m.startswith(TOOLS)  # an import of the tools fails the test above
        for line, text in tools_names(modules[m].read_text())
    ]
    assert not named, f"plug-in modules name modules of the tools: {'; '.join(named)}"


def test_tools_names_finds_a_module_of_the_tools_in_any_string():
    """The start-up hook once served the tools' old path by a string pair; f-strings and prefixes count too."""
    hook = 'OLD = {"yolo_tood.diagnostics": "yolo_tood.tools.analysis"}'
    assert [text for _, text in tools_names(hook)] == ["yolo_tood.diagnostics", "yolo_tood.tools.analysis"]
    assert tools_names('import_module(f"yolo_tood.tools.commands.{name}")')
    assert tools_names('"""See yolo_tood.tools."""')
    assert not tools_names('"yolo_tood.toolsmith", "tools/compat.py", "yolo_tood.train.tools", b"x", 1')


def test_help_imports_neither_torch_nor_ultralytics():
    out = run_python(
        "import sys\nfrom yolo_tood.tools.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'ultralytics') if m in sys.modules))"
    )
    assert out.startswith("usage: yolo-tood") and out.strip().splitlines()[-1] == "[]"


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_hook_and_head_table_agree():
    """The hook reads the head modules from the head table once one executes (it imports nothing at start-up)."""
    from yolo_tood.integration.heads import HEADS
    from yolo_tood.integration.hook import HEAD_PACKAGE, OLD_MODULES, head_modules

    assert head_modules() == {spec.module for spec in HEADS}
    assert all(spec.module.startswith(HEAD_PACKAGE) for spec in HEADS)
    assert all(__import__(new, fromlist=["x"]) for new in OLD_MODULES.values())


def test_the_tools_serve_their_old_module_path(monkeypatch):
    """``yolo_tood.diagnostics`` (the analyses before the layer folders) is the tools' own module, not the hook's:
    it imports first in a fresh process, re-exports the analysis names, and classes pickled under it load."""
    import pickle

    import yolo_tood.diagnostics as old
    from yolo_tood.tools import analysis

    assert old.__all__ == analysis.__all__ and all(getattr(old, n) is getattr(analysis, n) for n in old.__all__)
    assert old.alignment is analysis.alignment  # the rest from the real package, as the served module did
    monkeypatch.setattr(analysis.AlignmentResult, "__module__", "yolo_tood.diagnostics")  # as pickled then
    pickled = pickle.dumps(analysis.AlignmentResult)
    assert b"yolo_tood.diagnostics" in pickled and pickle.loads(pickled) is analysis.AlignmentResult
    out = run_python(
        "import yolo_tood, yolo_tood.diagnostics as d\n"
        "print(d.AlignmentValidator.__module__, d.__file__, yolo_tood.__file__)"
    )
    module, path, package = out.split()  # the package's own file, where it is installed (a clone or site-packages)
    assert module == "yolo_tood.tools.analysis.validator" and Path(path) == Path(package).with_name("diagnostics.py")


def test_the_packaged_yamls_path_imports_no_head_table():
    """CFG_DIR lives where its readers (the demo, the tools) need neither the head table nor torch."""
    graph = import_graph()
    assert graph["yolo_tood.paths"] == set() and "yolo_tood.integration.heads" not in graph["yolo_tood.demo"]
    out = run_python(
        "import sys\nfrom yolo_tood.paths import CFG_DIR\n"
        "print((CFG_DIR / 'yolov8-tood.yaml').is_file(), [m for m in ('torch', 'yolo_tood.integration.heads') "
        "if m in sys.modules])"
    )
    assert out.split() == ["True", "[]"]


def test_lazy_public_names():
    for name in yolo_tood.__all__:
        assert getattr(yolo_tood, name) is not None, name


def test_old_module_paths_are_the_new_modules():
    import yolo_tood.head as old_head
    import yolo_tood.hyp as old_hyp
    import yolo_tood.loss as old_loss

    assert old_head.TOODDetect is TOODDetect
    assert old_loss.TOODLoss is __import__("yolo_tood.train.loss", fromlist=["x"]).TOODLoss
    assert old_hyp.TOODHyp is yolo_tood.TOODHyp and callable(yolo_tood.register)


@pytest.mark.parametrize("old_path", ["yolo_tood.head", "yolo_tood.nn.head"])
def test_checkpoint_pickled_under_the_old_module_path_loads(tmp_path, old_path):
    """A checkpoint naming its classes under an old path (yolo_tood.head before the layer folders, yolo_tood.nn.head
    before nn/ was split by concern) loads in fresh processes, also safely."""
    ckpt = tmp_path / "old.pt"
    run_python(
        "import yolo_tood.nn.head as h\n"
        "for n in h.__all__:\n"
        "    c = getattr(h, n)\n"
        f"    if isinstance(c, type): c.__module__ = '{old_path}'  # as pickled then\n"
        "from ultralytics import YOLO\n"
        f"YOLO('cfg/yolov8n-tood.yaml', verbose=False).save(r'{ckpt}')\n"
    )
    import zipfile

    with zipfile.ZipFile(ckpt) as z:
        pickled = b"".join(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    assert old_path.encode() + b"\nTOODDetect" in pickled and b"yolo_tood.nn.tood_head" not in pickled
    load = f"from ultralytics import YOLO; print(type(YOLO(r'{ckpt}').model.model[-1]).__module__)"
    assert run_python(load).split()[-1] == "yolo_tood.nn.tood_head"
    assert run_python(load, env={"ULTRALYTICS_SAFE_LOAD": "1"}).split()[-1] == "yolo_tood.nn.tood_head"
    # Unpickling first (it imports the head, which imports ultralytics) still registers the loss and callbacks
    out = run_python(
        f"import torch; m = torch.load(r'{ckpt}', weights_only=False)['model']\n"
        "from ultralytics.cfg import get_cfg; import yolo_tood.integration.register as r\n"
        "m.args = get_cfg(); print(r.is_registered(), type(m.float().init_criterion()).__name__)"
    )
    assert out.split() == ["True", "TOODLoss"]


def test_unregister_restores_ultralytics_exactly():
    """register -> build a TOOD model -> unregister leaves ultralytics as a process that never saw yolo-tood."""
    out = run_python(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_UltralyticsFinder']  # pristine\n"
        "import ultralytics.engine.model as em, ultralytics.nn.tasks as t\n"
        "from ultralytics.utils.callbacks.base import default_callbacks as cb\n"
        "from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT\n"
        "snap = lambda: (t.parse_model, t.yaml_model_load, em.yaml_model_load, dict(vars(t.DetectionModel)),\n"
        "    {k: list(v) for k, v in cb.items()}, dict(vars(t)), dict(DEFAULT_CFG_DICT), dict(vars(DEFAULT_CFG)))\n"
        "before = snap()\n"
        "import yolo_tood\n"
        "yolo_tood.register()\n"
        "assert t.parse_model is not before[0] and t.DetectionModel.init_criterion is not before[3]['init_criterion']\n"
        "assert DEFAULT_CFG_DICT['tal_topk'] is None and DEFAULT_CFG.tal_topk is None  # TOOD train arguments\n"
        "m = t.DetectionModel('cfg/yolov8n-tood.yaml', verbose=False)\n"
        "assert type(m.model[-1]).__name__ == 'TOODDetect'\n"
        "yolo_tood.unregister()\n"
        "after = snap()\n"
        "for i, what in enumerate(('parse_model', 'yaml_model_load', 'engine.model.yaml_model_load',\n"
        "                          'DetectionModel', 'default_callbacks', 'tasks globals', 'DEFAULT_CFG_DICT',\n"
        "                          'DEFAULT_CFG')):\n"
        "    assert after[i] == before[i], what\n"
        "assert type(t.DetectionModel('yolov8n.yaml', verbose=False).model[-1]).__name__ == 'Detect'\n"
        "try:\n"
        "    t.DetectionModel('cfg/yolov8n-tood.yaml', verbose=False)\n"
        "except KeyError as e:\n"
        "    print('stock error', e)\n"
        "yolo_tood.register()  # and it can be registered again\n"
        "print(type(t.DetectionModel('cfg/yolov8n-tood.yaml', verbose=False).model[-1]).__name__)\n"
    )
    assert "stock error 'TOODDetect'" in out and out.split()[-1] == "TOODDetect"


def test_stock_model_built_while_another_thread_builds_a_tood_model(monkeypatch):
    """The TOOD build is held inside parse_model while this thread builds a stock model: it must get Detect."""
    entered, release = threading.Event(), threading.Event()
    init_weights = TOODDetect._init_weights

    def held(self):
        entered.set()
        release.wait(60)
        init_weights(self)

    monkeypatch.setattr(TOODDetect, "_init_weights", held)
    built: dict[str, object] = {}

    def build_tood():
        built["tood"] = DetectionModel({**yaml.safe_load(TOOD_YAML.read_text()), "scale": "n", "nc": 3}, verbose=False)

    thread = threading.Thread(target=build_tood)
    thread.start()
    try:
        assert entered.wait(60), "the TOOD build did not reach the head"
        built["stock"] = DetectionModel(
            {**yaml.safe_load(STOCK_YAML.read_text()), "scale": "n", "nc": 3}, verbose=False
        )
    finally:
        release.set()
        thread.join(60)
    assert type(built["stock"].model[-1]) is Detect
    assert type(built["tood"].model[-1]) is TOODDetect


def test_shared_datasets_come_from_one_variable(monkeypatch, tmp_path):
    from yolo_tood.data import SHARED_ENV, shared_datasets

    monkeypatch.delenv(SHARED_ENV, raising=False)
    assert shared_datasets(tmp_path / "repo") == tmp_path / "shared" / "datasets"
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "elsewhere"))
    assert shared_datasets(tmp_path / "repo") == tmp_path / "elsewhere" / "datasets"


NN_MODULES = sorted(f"yolo_tood.nn.{p.stem}" for p in (ROOT / "yolo_tood" / "nn").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("first", NN_MODULES)
def test_any_head_module_imports_first_in_a_fresh_process(first):
    """Importing any module of nn/ first (the loss imports nn/tap.py) works, and once ultralytics is imported the head
    modules are too (registration had to leave them while that module was executing)."""
    code = (
        f"import {first}, sys\n"
        "import ultralytics.nn.tasks\n"
        "print(all(m in sys.modules for m in ('yolo_tood.nn.head', 'yolo_tood.nn.tap_head')))"
    )
    assert run_python(code).split()[-1] == "True"
