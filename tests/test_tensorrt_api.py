"""API conformance of the TensorRT and CUDA code, checked here where neither can run: every TensorRT attribute,
method and enum that sdk/build/engine.py and sdk/backends/tensorrt.py use exists in the official Python bindings
of TensorRT 10.3 (JetPack 6) and 11.x, and every CUDA call exists in cuda-python (cuda.bindings) and pycuda.

The name lists in tests/data/api_names were read from the published wheels (and pycuda's source) by
tests/data/api_names/make_names.py, without importing them. This proves the names, not the behaviour:
argument orders and semantics are tested by tests/gpu where TensorRT and a GPU exist."""
import ast

import pytest

from sdk.build.engine import TENSORRT_10_ONLY
from tests.conftest import ROOT

NAMES = ROOT / "tests" / "data" / "api_names"
TRT_ROOTS = {"trt", "self.trt", "builder", "network", "parser", "config", "profile", "layer", "error", "cache",
             "self.runtime", "self.engine", "self.context", "self.logger", "engine", "tensor", "first_in", "first_out"}
CUDA_PYTHON_ROOTS = {"cudart", "self.rt", "props"}
PYCUDA_ROOTS = {"cuda", "self.cuda", "self.context", "dev", "stream", "ptr"}
# where each kind of object lives: (file, the class or function holding the code, its roots, the name lists)
SCOPES = [
    ("sdk/build/engine.py", None, TRT_ROOTS, "tensorrt"),
    ("sdk/build/engine.py", "build_progress", TRT_ROOTS, "tensorrt"),
    ("sdk/backends/tensorrt.py", "TensorRTBackend", TRT_ROOTS, "tensorrt"),
    ("sdk/backends/tensorrt.py", "_check_engine_here", TRT_ROOTS, "tensorrt"),
    ("sdk/backends/tensorrt.py", "_open", TRT_ROOTS, "tensorrt"),
    ("sdk/backends/tensorrt.py", "CudaPython", CUDA_PYTHON_ROOTS, "cuda-python"),
    ("sdk/backends/tensorrt.py", "PyCuda", PYCUDA_ROOTS, "pycuda"),
]


def load_names(prefix: str) -> dict[str, set[str]]:
    return {p.stem[len(prefix) + 1:]: set(p.read_text().split()) for p in sorted(NAMES.glob(f"{prefix}-*.txt"))}


LISTS = {"tensorrt": load_names("tensorrt-cu12-bindings"), "cuda-python": load_names("cuda-bindings"),
         "pycuda": load_names("pycuda")}


def used_names(source: str, roots: set[str], scope: str | None = None) -> tuple[dict[str, int], set[str]]:
    """{name: line} of attributes read on the roots (whole chains: trt.BuilderFlag.FP16 gives both names), and
    the names only probed with hasattr/getattr (they may exist in one version only)."""
    tree = ast.parse(source)
    if scope is not None:
        tree = next(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == scope)
    used, probed = {}, set()

    def rooted(expr) -> bool:
        text = ast.unparse(expr)
        return any(text == r or text.startswith(r + ".") for r in roots)

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(rooted(b) or (isinstance(b, ast.Attribute) and rooted(b.value))
                                                  for b in node.bases):  # overrides of a TensorRT interface
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                    used.setdefault(item.name, item.lineno)
        if isinstance(node, ast.Attribute) and rooted(node.value):
            used.setdefault(node.attr, node.lineno)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2 and rooted(node.args[0]) and isinstance(node.args[1], ast.Constant)):
            used.setdefault(node.args[1].value, node.lineno)
            probed.add(node.args[1].value)
    return used, probed


def known(name: str, names: set[str]) -> bool:
    """In the list, or the tail of a listed name (a compiler may keep QUANTIZE only inside DEQUANTIZE)."""
    return name in names or any(n.endswith(name) for n in names)


def problems(source: str, roots: set[str], kind: str, scope: str | None = None) -> list[str]:
    used, probed = used_names(source, roots, scope)
    found = []
    for name, line in sorted(used.items(), key=lambda kv: kv[1]):
        present = {version for version, names in LISTS[kind].items() if known(name, names)}
        if name in probed or (kind == "tensorrt" and name in TENSORRT_10_ONLY):
            need = {v for v in LISTS[kind] if v.startswith("10.")} if name in TENSORRT_10_ONLY else set()
            if not present or not need <= present:
                found.append(f"line {line}: {name} is in none of {kind} {sorted(LISTS[kind])}")
        elif present != set(LISTS[kind]):
            found.append(f"line {line}: {name} is missing from {kind} {sorted(set(LISTS[kind]) - present)}")
    return found


def test_the_name_lists_cover_both_tensorrt_versions_and_both_cuda_bindings():
    names = sum(len(used_names((ROOT / p).read_text(), r, s)[0]) for p, s, r, _ in SCOPES)
    assert names >= 60  # what the scopes below check: not a vacuous test
    assert {v.split(".")[0] for v in LISTS["tensorrt"]} == {"10", "11"} and "10.3.0" in LISTS["tensorrt"]
    assert LISTS["cuda-python"] and LISTS["pycuda"]


@pytest.mark.parametrize("path,scope,roots,kind", SCOPES, ids=[f"{p}:{s or 'module'}:{k}" for p, s, _, k in SCOPES])
def test_every_tensorrt_and_cuda_name_we_use_exists(path, scope, roots, kind):
    source = (ROOT / path).read_text()
    used, _ = used_names(source, roots, scope)
    assert used, f"{path}:{scope}: no TensorRT or CUDA name found; the roots no longer match the code"
    assert problems(source, roots, kind, scope) == []


def test_the_check_fails_on_a_misspelt_or_removed_name():
    """It can fail: a misspelt method, an enum TensorRT 11 removed, a wrong CUDA call."""
    source = (ROOT / "sdk/build/engine.py").read_text()
    misspelt = source.replace("config.set_memory_pool_limit(", "config.set_memory_pool_limt(")
    assert any("set_memory_pool_limt is missing" in p for p in problems(misspelt, TRT_ROOTS, "tensorrt"))
    removed = "def f(trt, config):\n    config.set_flag(trt.BuilderFlag.STRICT_TYPES)\n"
    assert any("STRICT_TYPES" in p for p in problems(removed, TRT_ROOTS, "tensorrt"))
    cuda = "def g(cudart):\n    cudart.cudaMallocPinned(16)\n"
    assert any("cudaMallocPinned" in p for p in problems(cuda, CUDA_PYTHON_ROOTS, "cuda-python"))
