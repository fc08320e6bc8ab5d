"""One import root: the package installs as `kimi_swarm` alone and lives beside transformers and its `kernels`."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PARTS = {"swarm": "kimi_swarm", "backend": "kimi_swarm.backend", "kernels": "kimi_swarm.kernels",
         "tools": "kimi_swarm.tools"}


def test_transformers_kimi_linear_and_our_kernels_import_in_one_process():
    """pytest runs from the checkout root, as the README runs it; the root must not be importable."""
    import transformers.models.kimi_linear.modeling_kimi_linear as modeling

    import kimi_swarm.kernels

    assert hasattr(modeling, "KimiLinearForCausalLM") and callable(kimi_swarm.kernels.chunk_kda)
    assert REPO not in {Path(entry or ".").resolve() for entry in sys.path}
    hf_kernels = importlib.util.find_spec("kernels")
    assert hf_kernels is None or Path(hf_kernels.origin).parent != REPO / "kernels"


def _top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/", 1)[0] for name in archive.namelist()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                   cwd=out, check=True)
    return next(out.glob("kimi_swarm-*.whl"))


def test_the_wheel_installs_one_top_level_name_with_its_data(wheel):
    assert _top_level_names(wheel) == {"kimi_swarm", wheel.name.split("-py")[0] + ".dist-info"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"kimi_swarm/py.typed", "kimi_swarm/backend/checkpoints/config.json"} <= names
    assert any(name.startswith("kimi_swarm/backend/checkpoints/model") for name in names)
    assert not any("teacher" in name or "trajectories" in name or "train_" in name for name in names)
    sources = {"/".join(_module(path)) + ".py" for folder in PARTS for path in (REPO / folder).rglob("*.py")}
    assert sources <= names, f"modules left out of the wheel: {sorted(sources - names)}"


def test_the_installed_wheel_runs_beside_transformers_from_a_neutral_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    probe = ("import kimi_swarm, kimi_swarm.kernels, transformers.models.kimi_linear.modeling_kimi_linear;"
             "from kimi_swarm.backend import default_model_path;"
             "print(kimi_swarm.__file__); print(default_model_path())")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                          capture_output=True, text=True, check=True)
    package_file, checkpoint = done.stdout.split()
    assert Path(package_file).is_relative_to(site) and Path(checkpoint).is_relative_to(site)


def _module(path: Path) -> list[str]:
    """The dotted name of a file of one of the four folders, as installed."""
    folder = path.relative_to(REPO).parts[0]
    return [*PARTS[folder].split("."), *path.relative_to(REPO / folder).with_suffix("").parts]


def _imports(path: Path) -> list[str]:
    """Absolute module names `path` imports (relative imports resolved against its package), leaving out the
    packages that hold it (importing a module imports those anyway)."""
    own = _module(path)
    package = own[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return [name for name in names if name.split(".") != own[: len(name.split("."))]]


LAYERS = ["kimi_swarm.kernels", "kimi_swarm.backend.checkpoints", "kimi_swarm.backend.model",
          "kimi_swarm.backend.engine", "kimi_swarm.backend.chat"]


def _rank(module: str) -> int | None:
    return next((rank for rank, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")),
                None)


@pytest.mark.parametrize("folder", sorted(PARTS))
def test_imports_go_one_way(folder):
    """kernels <- backend model <- engine <- chat <- the swarm -> tools; the tools import no other part."""
    problems = []
    for path in sorted((REPO / folder).rglob("*.py")):
        own = _rank(".".join(_module(path)))
        for module in _imports(path):
            if not module.startswith("kimi_swarm"):
                continue
            target = _rank(module)
            higher = own is not None and (target is None or target > own)
            if folder == "tools" and not module.startswith("kimi_swarm.tools"):
                higher = True
            if higher:
                problems.append(f"{path.relative_to(REPO)} imports {module}")
    assert not problems, "\n".join(problems)


def test_training_code_is_outside_the_runtime():
    runtime = [path for folder in PARTS for path in (REPO / folder).rglob("*.py")]
    training = {path.stem for path in (REPO / "training").glob("*.py")}
    offenders = [f"{path.relative_to(REPO)} imports {module}" for path in runtime for module in _imports(path)
                 if module.split(".")[0] in training]
    assert not offenders, offenders


def test_no_import_cycles_between_modules():
    """Package roots re-export their parts and are left out; between modules, imports form no cycle."""
    files = {".".join(_module(path)): path for folder in PARTS for path in (REPO / folder).rglob("*.py")
             if path.name != "__init__.py"}
    graph = {name: {module for module in _imports(path) if module in files and module != name}
             for name, path in files.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(name):], name]))
        if name in done:
            return
        for module in sorted(graph[name]):
            visit(module, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize(("part", "not_loaded"), [
    ("kimi_swarm.kernels", ["kimi_swarm.orchestrator", "kimi_swarm.backend", "pydantic", "httpx"]),
    ("kimi_swarm.tools", ["kimi_swarm.orchestrator", "kimi_swarm.backend", "torch"]),
])
def test_a_part_imports_without_the_rest(part, not_loaded, tmp_path):
    """The root's public names load on first use, so a part alone (the kernels on a GPU machine, the tools in
    another agent framework) does not pull in the orchestration, the engine or torch."""
    probe = f"import sys, {part}; print(' '.join(m for m in {not_loaded!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_every_public_name_of_the_root_is_what_it_names_after_every_module_is_loaded():
    """A submodule sharing a public name would replace it on the package once imported (as `tool` once did)."""
    import kimi_swarm

    for path in (REPO / "swarm").rglob("*.py"):
        importlib.import_module(".".join(_module(path)).removesuffix(".__init__"))
    shadowed = [name for name in kimi_swarm.__all__ if type(getattr(kimi_swarm, name)).__name__ == "module"]
    assert not shadowed, shadowed


@pytest.mark.parametrize("folder", ["benchmarks", "training", "examples"])
def test_scripts_run_from_their_folder_do_not_shadow_installed_packages(folder):
    """A script's own folder comes first on sys.path: a module there named like an installed distribution's top
    level (transformers imports one called `kernels`) would be imported in its place."""
    from importlib.metadata import packages_distributions

    installed = set(packages_distributions())
    root = REPO / folder
    modules = {path.stem for path in root.glob("*.py")} | {path.parent.name for path in root.glob("*/__init__.py")}
    assert modules and not modules & installed, sorted(modules & installed)
