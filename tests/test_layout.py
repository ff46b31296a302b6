"""The layout: one package whose imports go one way, thin root files that keep the original's names."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "cleverscore"
# The card's files at the root, and nothing else: thin command lines and the original's module names.
CARD_FILES = {"collect_gradients.py", "clever.py", "estimate_gradient_norm.py", "shmemarray.py", "defense.py",
              "setup_mnist.py", "setup_cifar.py", "setup_imagenet.py", "train_models.py", "train_nlayer.py",
              "attacks.py"}
# Stages, lowest first: a module may import from its own stage and the ones before it, never after.
STAGES = (
    ("cleverscore.errors", "cleverscore.norms", "cleverscore.locations", "cleverscore.settings",
     "cleverscore.log_lines", "cleverscore.mat_files"),
    ("cleverscore.data",),
    ("cleverscore.models",),
    ("cleverscore.scoring",),
    ("cleverscore.sampling",),
    ("cleverscore.certify",),
    ("cleverscore.attacks",),
    ("cleverscore.running",),
    ("cleverscore.api", "cleverscore"),
    ("cleverscore.cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from cleverscore.data import mnist` imports the submodule
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def stage_of(module: str) -> int:
    best = None
    for index, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} belongs to no stage"
    return best[0]


def test_the_root_holds_only_the_card_files():
    assert {p.name for p in REPO.glob("*.py")} == CARD_FILES


def test_the_package_never_imports_a_root_file():
    root_modules = {p.stem for p in REPO.glob("*.py")}
    offenders = {str(p.relative_to(REPO)): sorted(imported_modules(p) & root_modules) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_package_has_no_import_circle():
    graph = package_graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert circles == []


def test_imports_go_from_the_stages_up_to_the_command_lines():
    backwards = [(module, target) for module, targets in package_graph().items() for target in targets
                 if stage_of(target) > stage_of(module)]
    assert backwards == []


def test_the_card_files_export_what_the_originals_users_call():
    import defense
    import estimate_gradient_norm
    import setup_cifar
    import setup_mnist
    import shmemarray

    est = estimate_gradient_norm.EstimateLipschitz
    assert list(inspect.signature(est.estimate).parameters)[:9] == [
        "self", "x_0", "true_label", "target_label", "Nsamp", "Niters", "sample_norm", "transform", "order"]
    for method in ("load_model", "estimate", "estimate_targets", "estimate_hessian", "search_maxima", "close"):
        assert callable(getattr(est, method))
    assert callable(setup_mnist.MNIST) and callable(setup_mnist.MNISTModel)
    assert callable(setup_cifar.CIFAR) and callable(setup_cifar.CIFARModel)
    assert callable(shmemarray.SharedArray)
    for name in ("defend_reduce", "defend_jpeg", "defend_png"):
        assert callable(getattr(defense, name))


def test_running_from_the_checkout_shadows_no_popular_package():
    # `datasets` (HuggingFace) and `tables` (PyTables, which pandas imports for HDF5) must not
    # resolve to a file of ours when the checkout is the working folder or on sys.path.
    code = ("import importlib.util, sys, cleverscore, collect_gradients, clever, estimate_gradient_norm\n"
            "import cleverscore.cli.score, cleverscore.cli.collect, cleverscore.cli.tables\n"
            "for name in ('datasets', 'tables', 'compare', 'cluster', 'errors', 'norms'):\n"
            "    spec = importlib.util.find_spec(name)\n"
            "    print(name, None if spec is None else spec.origin, name in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        name, origin, loaded = line.split()
        assert origin == "None" or not origin.startswith(str(REPO)), line
        assert loaded == "False", line


def test_pip_install_gives_an_importable_package_from_another_folder(tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(wheel_dir), str(REPO)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("cleverscore-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    code = ("import sys, cleverscore\n"
            "from cleverscore.sampling.estimator import EstimateLipschitz\n"
            "print(cleverscore.__file__, callable(cleverscore.clever_scores), 'datasets' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    origin, is_callable, shadowed = out.stdout.split()
    assert origin.startswith(str(site)) and is_callable == "True" and shadowed == "False"
    assert {p.name for p in (site / "bin").iterdir()} >= {"clever-collect", "clever-score"}
