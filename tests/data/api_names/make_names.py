"""Writes the API name lists that tests/test_tensorrt_api.py checks our TensorRT and CUDA calls against.

    python tests/data/api_names/make_names.py [WHEEL_OR_SDIST ...]

Without arguments it downloads (pip download --no-deps) tensorrt-cu12-bindings 10.3.0 (JetPack 6) and the
newest 11.x, cuda-bindings 12.9 (cuda-python) and the pycuda source, and reads the names without importing
anything: the identifiers in the compiled modules' strings (pybind11 and Cython keep every exported name
as a string) and the names defined in their Python files. One file per package and version,
<package>-<version>.txt, one name a line. (A compiler may store a name only as the tail of a longer string,
e.g. QUANTIZE inside DEQUANTIZE, so the test also accepts a name that ends a listed one.)
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = ["tensorrt-cu12-bindings==10.3.0", "tensorrt-cu12-bindings==11.*", "cuda-bindings==12.9.*", "pycuda"]
IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{1,}")


def python_names(source: bytes) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            found.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
    return found


def names_of(files: dict[str, bytes]) -> set[str]:
    found = set()
    for name, data in files.items():
        if name.endswith((".so", ".pyd")):
            found |= {m.decode() for m in IDENT.findall(data) if not m.startswith(b"_Z")}
        elif name.endswith((".py", ".pyi", ".pyx", ".pxd")):
            found |= python_names(data)
        elif name.endswith((".cpp", ".hpp")):  # pycuda's boost.python wrappers: .def("name", ...), class_<...>("Name"
            found |= {m.decode() for m in re.findall(rb'(?:def|method|DEF_SIMPLE_FUNCTION\w*|value|>)\s*\(\s*"([A-Za-z_]\w*)"',
                                                      data)}
            found |= {m.decode() for m in re.findall(rb'DECLARE_EXC\((\w+)', data)}  # exceptions: DECLARE_EXC(Error, ...)
    return found


def read_archive(path: Path) -> tuple[str, str, dict[str, bytes]]:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            files = {n: z.read(n) for n in z.namelist() if n.endswith((".so", ".py", ".pyi", ".pxd"))}
        package, version = path.name.split("-")[:2]
    else:
        with tarfile.open(path) as t:
            files = {m.name: t.extractfile(m).read() for m in t.getmembers()
                     if m.isfile() and m.name.endswith((".py", ".cpp", ".hpp"))}
        package, version = path.name[: -len(".tar.gz")].rsplit("-", 1)
    return package.replace("_", "-"), version, files


def main(paths: list[str]) -> None:
    if not paths:
        folder = Path(tempfile.mkdtemp())
        for spec in PACKAGES:
            extra = ["--no-binary", ":all:", "--no-build-isolation"] if spec == "pycuda" else []
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), *extra, spec],
                           check=True)
        paths = [str(p) for p in sorted(folder.iterdir())]
    for p in paths:
        package, version, files = read_archive(Path(p))
        out = HERE / f"{package}-{version}.txt"
        out.write_text("\n".join(sorted(names_of(files))) + "\n")
        print(f"wrote {out} ({len(out.read_text().splitlines())} names)")


if __name__ == "__main__":
    main(sys.argv[1:])
