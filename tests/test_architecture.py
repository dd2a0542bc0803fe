"""The package map of docs/architecture.md, enforced: imports only go down the workflow,
no import cycles (lazy imports included), no module over 400 lines, and ``inference``
(what ``hsftrain segment`` runs) never loads torch or Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "hsftrain"

#: Top-level modules and packages of hsftrain, lowest first. A module may import from
#: its own package or module and from lower layers only (never a sibling of its layer).
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("config",),
    ("hub",),
    ("data",),
    ("evaluation", "models", "losses", "optim"),
    ("compression", "planning"),
    ("training",),
    ("export", "inference"),
    ("workflow", "collect"),
    ("report",),
    ("cli",),
]
#: The most lines a module may have (one job, readable in one sitting).
MAX_LINES = 400
#: Cycles known and being removed (each with its reason); any other cycle fails, and so
#: does a listed one that is gone (empty this list then).
KNOWN_CYCLES: list[list[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every hsftrain module each module imports, at the top or inside a function."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_top_level_module_has_a_layer() -> None:
    placed = [name for layer in LAYERS for name in layer]
    assert len(placed) == len(set(placed))
    present = {_top(m) for m in _modules()} - {""}
    assert present == set(placed), f"add to LAYERS: {present - set(placed)}"


def test_imports_only_go_down_the_workflow() -> None:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    wrong = []
    for module, targets in _imports(_modules()).items():
        for target in targets:
            a, b = _top(module), _top(target)
            if b and a != b and layer[b] >= layer[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that go up (or sideways) the workflow:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    assert _cycles(_imports(_modules())) == KNOWN_CYCLES


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_module_is_too_long() -> None:
    long = {
        str(path.relative_to(SRC)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_inference_never_loads_torch_or_lightning() -> None:
    """Every module of ``hsftrain.inference`` and ``hsftrain.report`` (the QC report that
    ``segment`` ends with) imported in a fresh interpreter (``hub``:
    tests/hub/test_fetch.py)."""
    names = sorted(m for m in _modules() if _top(m) in ("inference", "report"))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted({'torch', 'lightning', 'torchio'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parent
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_training_with_the_torch_backend_never_loads_torchio() -> None:
    """torchio (and the SimpleITK it loads, 53 MB) is the optional per-patch augmentation
    backend: training, export and evaluation run without it (e.g. on a GPU machine whose
    image lacks it, benchmarks/gpu_session.sh)."""
    code = (
        "import sys\n"
        "import hsftrain.workflow, hsftrain.training.run, hsftrain.data.datamodule\n"
        "import hsftrain.export.api, hsftrain.evaluation.api, hsftrain.cli.app\n"
        "print(sorted({'torchio', 'SimpleITK'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parent
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_package_ships_its_type_information() -> None:
    """PEP 561: ``py.typed`` in the package and in its package data."""
    assert (PACKAGE / "py.typed").is_file()
    assert '"py.typed"' in (SRC.parent / "pyproject.toml").read_text()


#: The most lines a function may span (one step, readable at a glance).
MAX_FUNCTION_LINES = 80
#: The most named parameters (``self`` / ``cls``, ``*args`` and ``**kwargs`` not counted) a
#: function may take; more belong in a settings object (a small frozen dataclass).
MAX_PARAMETERS = 7
#: Functions allowed past those limits (``module:qualified name``), each with its reason.
SIZE_EXCEPTIONS: dict[str, str] = {
    # typer commands: each parameter is a command-line option, documented by --help
    "hsftrain.cli.loop:_register_collect.data_collect": "typer command: parameters are options",
    "hsftrain.cli.loop:_register_publish.hub_publish": "typer command: parameters are options",
    # torch-style constructors: hyper-parameters as keyword arguments, as torch.nn does
    "hsftrain.optim.adamp:AdamP.__init__": "torch-style optimiser: hyper-parameters as kwargs",
    "hsftrain.models.unet:UNet3D.__init__": "torch-style network: hyper-parameters as kwargs",
    # a LightningModule's parameters are the hyper-parameters every checkpoint stores
    # (save_hyperparameters): checkpoints written by earlier versions must keep loading
    "hsftrain.training.module:SegmentationModule.__init__": "checkpoint hyper-parameters",
}


def _functions() -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function and method of src/, by ``module:qualified name``."""
    out: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for module, path in _modules().items():

        def walk(node: ast.AST, prefix: str, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    out[f"{module}:{prefix}{child.name}"] = child
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(ast.parse(path.read_text()), "")
    return out


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = function.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return [n for n in names if n not in ("self", "cls")]


def _oversized() -> dict[str, str]:
    found = {}
    for name, function in _functions().items():
        lines = (function.end_lineno or function.lineno) - function.lineno + 1
        params = len(_parameters(function))
        if lines > MAX_FUNCTION_LINES or params > MAX_PARAMETERS:
            found[name] = f"{lines} lines, {params} parameters"
    return found


def test_no_function_is_too_long_or_takes_too_many_parameters() -> None:
    found = _oversized()
    new = {name: size for name, size in found.items() if name not in SIZE_EXCEPTIONS}
    assert not new, (
        f"split into named steps (over {MAX_FUNCTION_LINES} lines) or pass a settings object "
        f"(over {MAX_PARAMETERS} parameters), or add to SIZE_EXCEPTIONS with a reason: {new}"
    )
    stale = sorted(set(SIZE_EXCEPTIONS) - set(found))
    assert not stale, f"within the limits now: remove from SIZE_EXCEPTIONS: {stale}"
    assert all(reason.strip() for reason in SIZE_EXCEPTIONS.values())


#: The one module that reads dotted config keys and parses device settings.
KEYS_MODULE = "hsftrain.config.keys"


def _reads_dotted_keys(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether ``function`` is a reader of a dotted key it is given: it passes one of its
    parameters as the key of ``OmegaConf.select`` or splits one at dots."""
    params = set(_parameters(function))
    for node in ast.walk(function):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        func = node.func
        if (
            func.attr == "select"
            and isinstance(func.value, ast.Name)
            and func.value.id == "OmegaConf"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Name)
            and node.args[1].id in params
        ):
            return True
        if (
            func.attr == "split"
            and isinstance(func.value, ast.Name)
            and func.value.id in params
            and [ast.unparse(a) for a in node.args] == ["'.'"]
        ):
            return True
    return False


def _parses_devices(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A function named for devices that does not hand them to ``parse_devices``."""
    if not function.name.strip("_").endswith("devices"):
        return False
    calls = {
        getattr(n.func, "id", getattr(n.func, "attr", ""))
        for n in ast.walk(function)
        if isinstance(n, ast.Call)
    }
    return "parse_devices" not in calls


def test_one_reader_of_dotted_keys_and_devices() -> None:
    found = sorted(
        name
        for name, function in _functions().items()
        if not name.startswith(KEYS_MODULE + ":")
        and (_reads_dotted_keys(function) or _parses_devices(function))
    )
    assert not found, f"read dotted keys and devices with {KEYS_MODULE}: {found}"


def test_the_key_reader_rule_finds_readers() -> None:
    code = (
        "def get(cfg, key, default=None):\n    return OmegaConf.select(cfg, key)\n"
        "def _value(data, key):\n    for part in key.split('.'):\n        data = data[part]\n"
        "def _devices(value):\n    return [int(v) for v in value]\n"
        "def fine(cfg):\n    return OmegaConf.select(cfg, 'a.b')\n"
        "def _gpu_devices(value):\n    return parse_devices(value)\n"
    )
    functions = [n for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    flagged = [f.name for f in functions if _reads_dotted_keys(f) or _parses_devices(f)]
    assert flagged == ["get", "_value", "_devices"]
