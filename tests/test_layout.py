"""The package's imports run one way: cli -> pipelines -> weights (loading) -> models / diffusion / conditioning /
text_encoder -> latents, audio, media; model files import only mlx, numpy, the standard library and each other."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ltx_mlx"
# Each part of the package may import the parts of a later layer, never those of its own or an earlier layer
# (inside a layer, modules may import each other).
LAYERS = [
    {"cli"},
    {"pipelines"},
    {"weights", "convert"},
    {"models", "diffusion", "conditioning", "text_encoder"},
    {"latents", "audio", "media"},
]
RUNTIME_PACKAGES = {"mlx", "numpy", "safetensors", "tokenizers", "huggingface_hub", "av", "tqdm"}


def part_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def imports(path: Path) -> list[str]:
    """Absolute names of every module `path` imports (relative imports resolved), lazy imports included."""
    module = "ltx_mlx." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names.append(target)
            names += [f"{target}.{a.name}" for a in node.names]  # `from . import x` imports module x
    return names


def layer(part: str) -> int | None:
    return next((i for i, parts in enumerate(LAYERS) if part in parts), None)


def test_imports_run_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        here = layer(part_of("ltx_mlx." + ".".join(path.relative_to(ROOT).with_suffix("").parts)))
        if here is None:
            continue
        for name in imports(path):
            if not name.startswith("ltx_mlx.") or name.count(".") < 1:
                continue
            there = layer(part_of(name))
            if there is not None and there < here:
                wrong.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_model_files_import_only_mlx_numpy_and_each_other():
    allowed = {"mlx", "numpy"} | set(sys.stdlib_module_names)
    wrong = []
    for path in sorted((ROOT / "models").glob("*.py")):
        for name in imports(path):
            top = name.split(".")[0]
            if name.startswith("ltx_mlx."):
                if not name.startswith("ltx_mlx.models"):
                    wrong.append(f"{path.name} imports {name}")
            elif top not in allowed:
                wrong.append(f"{path.name} imports {name}")
    assert not wrong, wrong


def test_runtime_imports_are_the_declared_dependencies():
    """No torch, transformers or other undeclared package anywhere in the package (lazy imports included)."""
    allowed = RUNTIME_PACKAGES | set(sys.stdlib_module_names) | {"ltx_mlx", "__future__"}
    wrong = sorted({f"{p.relative_to(ROOT.parent)}: {n}" for p in ROOT.rglob("*.py") for n in imports(p)
                    if n.split(".")[0] not in allowed})
    assert not wrong, wrong
