"""A FAKE TensorRT (and CUDA runtime) for this machine, which has neither: it enforces the documented rules it
stands for, so that code breaking them fails here.

What it enforces (each rule as sdk/build/tensorrt_rules.json states it, with its source there):
- the ONNX parser: a UINT8 network input may feed only a Cast (NVIDIA/TensorRT#3985); DequantizeLinear takes
  INT8 only (no INT32 biases); parse_from_file() returns False with the node named;
- the builder: TF32 is on until cleared (the flag state is recorded, `config.flags`); a strongly typed network
  refuses the FP16/INT8 flags and per-layer precisions; DLA needs static shapes (min = opt = max), FP16 or INT8,
  no strongly typed network, and GPU fallback for any layer that is not a DLA layer (sdk.build.tensorrt_rules'
  list); INT8 on DLA from Q/DQ nodes is refused; a layer given a float precision whose output is INT32/BOOL
  fails the build; set_timing_cache() returns False for a cache of another TensorRT or GPU;
- the runtime: deserialize_cuda_engine() returns None for a plan of another TensorRT build or GPU (unless built
  version-compatible and engine host code is allowed), and for a DLA plan when the runtime's DLA core was not
  set to it; set_input_shape() returns False outside the profile, and execute_async_v3() then fails.

The "engine" it builds is a JSON header plus the parsed ONNX graph, which the fake runtime runs in ONNX Runtime.
What it does not prove: that real TensorRT accepts these calls, builds the graph, or computes the same numbers
(tests/gpu does that where TensorRT and a GPU exist); the real parser's layer names and the layers it adds
(the fake adds one broadcast shuffle per element-wise node with a constant operand, named like the parser's);
real timings, memory, DLA placement and its subgraph limits.
"""
from __future__ import annotations

import json
import types

import numpy as np

from sdk.build.tensorrt_rules import rules

HEADER_END = b"\n--fake-plan--\n"


class DataType:
    def __init__(self, name, np_type):
        self.name, self.np_type = name, np_type

    def __repr__(self):
        return f"DataType.{self.name}"


FLOAT, HALF, INT8, INT32, INT64, BOOL, UINT8 = (DataType(n, t) for n, t in (
    ("FLOAT", np.float32), ("HALF", np.float16), ("INT8", np.int8), ("INT32", np.int32), ("INT64", np.int64),
    ("BOOL", np.bool_), ("UINT8", np.uint8)))
ONNX_TYPES = {1: FLOAT, 10: HALF, 3: INT8, 6: INT32, 7: INT64, 9: BOOL, 2: UINT8}


class FakeCuda:
    """Device memory as NumPy arrays keyed by address; counts copies; remembers what was freed."""

    name = "fake-cuda"

    def __init__(self, gpu=("Fake Orin", "8.7")):
        self.memory, self.next, self.copies, self.streams = {}, 4096, 0, set()
        self.gpu = gpu

    def stream(self):
        s = object()
        self.streams.add(id(s))
        return s

    def stream_handle(self, stream) -> int:
        return id(stream)

    def malloc(self, nbytes):
        addr, self.next = self.next, self.next + nbytes + 4096
        self.memory[addr] = np.zeros(nbytes, np.uint8)
        return addr

    def free(self, ptr):
        del self.memory[ptr]

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def free_pinned(self, array):
        pass

    def to_device(self, dst, src, stream):
        self.copies += 1
        self.memory[dst][: src.nbytes] = np.ascontiguousarray(src).view(np.uint8).ravel()

    def to_host(self, dst, src, stream):
        dst.view(np.uint8).reshape(-1)[:] = self.memory[src][: dst.nbytes]

    def synchronize(self, stream):
        pass

    def destroy(self, stream):
        self.streams.discard(id(stream))

    def device(self):
        return {"gpu": self.gpu[0], "compute_capability": self.gpu[1]}


# -- network and parser -----------------------------------------------------------------------------


class Tensor:
    def __init__(self, name, dtype, shape_tensor=False):
        self.name, self.dtype, self.is_shape_tensor = name, dtype, shape_tensor
        self.dynamic_range = None


class Layer:
    def __init__(self, name, op, layer_type, inputs, outputs):
        self.name, self.op, self.type = name, op, layer_type
        self._inputs, self._outputs = inputs, outputs
        self._precision = outputs[0].dtype if outputs else FLOAT
        self.precision_set = False

    @property
    def num_inputs(self):
        return len(self._inputs)

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value):
        self._precision, self.precision_set = value, True


class Network:
    def __init__(self, strongly_typed):
        self.strongly_typed = strongly_typed
        self.layers, self.inputs, self.onnx_bytes, self.graph = [], [], None, None

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class ParserError:
    def __init__(self, node_name, op, desc):
        self._node, self._op, self._desc = node_name, op, desc

    def node_name(self):
        return self._node

    def node(self):
        return -1

    def node_operator(self):
        return self._op

    def desc(self):
        return self._desc


def _layer_type(trt, op):
    return {"Constant": trt.LayerType.CONSTANT, "Shape": trt.LayerType.SHAPE, "Cast": trt.LayerType.CAST}.get(op, op)


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.errors = network, []

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]

    def parse_from_file(self, path):
        import onnx

        trt = FAKE_MODULE[0]
        proto = onnx.shape_inference.infer_shapes(onnx.load(path))
        g = proto.graph
        dtypes = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
        dtypes.update({i.name: i.data_type for i in g.initializer})
        inits = {i.name for i in g.initializer}
        tensors = {}
        for i in g.input:
            t = Tensor(i.name, ONNX_TYPES.get(dtypes[i.name], FLOAT))
            tensors[i.name] = t
            self.network.inputs.append(t)
        for init in g.initializer:
            t = Tensor(init.name, ONNX_TYPES.get(init.data_type, FLOAT))
            tensors[init.name] = t
            self.network.layers.append(Layer(init.name, "Constant", trt.LayerType.CONSTANT, [], [t]))
        for node in g.node:
            ins = [tensors[i] for i in node.input if i]
            for t in ins:
                if t.dtype is UINT8 and node.op_type != "Cast":
                    self.errors.append(ParserError(node.name, node.op_type, f"{node.op_type} does not take UINT8 "
                                                   f"input {t.name!r}: UINT8 inputs must feed a Cast"))
            if node.op_type == "DequantizeLinear" and ins and ins[0].dtype is not INT8:
                self.errors.append(ParserError(node.name, node.op_type, f"DequantizeLinear takes INT8, not "
                                               f"{ins[0].dtype.name}"))
            outs = [Tensor(o, ONNX_TYPES.get(dtypes.get(o, 1), FLOAT)) for o in node.output]
            for t in outs:
                tensors[t.name] = t
            if node.op_type in ("Add", "Sub", "Mul", "Div") and any(i in inits for i in node.input):
                const = next(i for i in node.input if i in inits)
                shuffle_out = Tensor(f"{const}_broadcast", tensors[const].dtype)
                self.network.layers.append(Layer(f"{node.name}_broadcast_shuffle", "Shuffle", "Shuffle",
                                                 [tensors[const]], [shuffle_out]))
            self.network.layers.append(Layer(node.name, node.op_type, _layer_type(trt, node.op_type), ins, outs))
        self.network.onnx_bytes = open(path, "rb").read()
        self.network.graph = proto
        return not self.errors


# -- builder ----------------------------------------------------------------------------------------


class TimingCache:
    def __init__(self, key, entries=b""):
        self.key, self.entries = key, entries

    def serialize(self):
        return self.key + b"\n" + self.entries + b"built"


class Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class BuilderConfig:
    def __init__(self, trt):
        self.trt = trt
        self.flags = {"TF32"}  # TensorRT's default: TF32 on
        self.profiles, self.timing_cache, self.pool = [], None, None
        self.default_device_type, self.DLA_core, self.builder_optimization_level = "GPU", -1, 3

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pool = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, data):
        key = self.trt.cache_key()
        if data and not data.startswith(b"FAKE-TC"):
            raise RuntimeError("not a timing cache")
        return TimingCache(data.split(b"\n")[0] if data else key, b"")

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.key != self.trt.cache_key() and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True


class Builder:
    def __init__(self, logger):
        self.trt = FAKE_MODULE[0]
        self.log = self.trt.build_log

    def create_network(self, flags):
        typed = bool(flags & (1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return Network(typed)

    def create_builder_config(self):
        return BuilderConfig(self.trt)

    def create_optimization_profile(self):
        return Profile()

    def refuse(self, why):
        self.log.append(why)
        return None

    def build_serialized_network(self, network, config):
        trt = self.trt
        trt.last_build = {"network": network, "config": config}
        if network.strongly_typed:
            if {"FP16", "INT8"} & config.flags:
                return self.refuse("FP16/INT8 flags on a strongly typed network")
            if any(layer.precision_set for layer in network.layers):
                return self.refuse("layer precisions on a strongly typed network")
        for layer in network.layers:
            if layer.precision_set and layer.precision in (FLOAT, HALF) and any(
                    t.dtype in (INT32, INT64, BOOL) for t in layer._outputs):
                return self.refuse(f"{layer.name}: float precision on a layer with integer outputs")
        shapes = config.profiles[0].shapes["frames"]
        dla = config.default_device_type == trt.DeviceType.DLA
        if dla:
            if not trt.has_dla:
                return self.refuse("this TensorRT has no DLA")
            if network.strongly_typed:
                return self.refuse("DLA takes no strongly typed network")
            if len(set(shapes)) != 1:
                return self.refuse("DLA needs static shapes")
            if not {"FP16", "INT8"} & config.flags:
                return self.refuse("DLA runs FP16 or INT8 only")
            if any(layer.op in ("QuantizeLinear", "DequantizeLinear") for layer in network.layers):
                return self.refuse("DLA takes INT8 from ranges, not Q/DQ")
            dla_ops = set(rules()["dla"]["ops"])
            gpu = [layer for layer in network.layers if layer.op not in dla_ops and layer.op != "Constant"
                   or layer.precision is FLOAT and layer.precision_set]
            if gpu and "GPU_FALLBACK" not in config.flags:
                return self.refuse(f"{gpu[0].name} cannot run on DLA and GPU fallback is off")
            trt.last_build["gpu_layers"] = [layer.name for layer in gpu]
        if config.timing_cache is not None:
            config.timing_cache.entries += b"entries;"
        header = {"tensorrt": trt.__version__, "gpu": trt.cuda.gpu[1], "shapes": {"frames": shapes},
                  "dla_core": config.DLA_core if dla else None,
                  "version_compatible": "VERSION_COMPATIBLE" in config.flags}
        return json.dumps(header).encode() + HEADER_END + network.onnx_bytes


# -- runtime ----------------------------------------------------------------------------------------


class Runtime:
    def __init__(self, logger):
        self.trt = FAKE_MODULE[0]
        self.DLA_core = -1
        self.engine_host_code_allowed = False
        self.trt.runtimes.append(self)

    def deserialize_cuda_engine(self, data):
        head, sep, onnx_bytes = bytes(data).partition(HEADER_END)
        if not sep:
            return None
        header = json.loads(head)
        built, here = header["tensorrt"], self.trt.__version__
        if header["version_compatible"]:
            if not (self.engine_host_code_allowed and built.split(".")[0] == here.split(".")[0]):
                return None
        elif built != here:
            return None
        if header["gpu"] != self.trt.cuda.gpu[1]:
            return None
        if header["dla_core"] is not None and self.DLA_core != header["dla_core"]:
            return None
        return Engine(onnx_bytes, header, self.trt)


class Engine:
    def __init__(self, onnx_bytes, header, trt):
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.trt, self.profile = trt, [tuple(s) for s in header["shapes"]["frames"]]
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.names = list(self.inputs) + list(self.outputs)
        self.contexts = 0

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name in self.inputs else self.trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        shape = (self.inputs.get(name) or self.outputs[name]).shape
        return tuple(-1 if not isinstance(d, int) else d for d in shape)

    def get_tensor_dtype(self, name):
        return UINT8 if name in self.inputs else FLOAT

    def get_tensor_profile_shape(self, name, profile):
        return [list(s) for s in self.profile]

    def create_execution_context(self):
        self.contexts += 1
        return Context(self)


class Context:
    def __init__(self, engine):
        self.engine, self.addresses, self.shapes = engine, {}, {}

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.profile
        if not (len(shape) == len(low) and all(a <= s <= b for a, s, b in zip(low, shape, high))):
            self.shapes.pop(name, None)
            return False
        self.shapes[name] = tuple(shape)
        return True

    def execute_async_v3(self, stream_handle):
        e, memory = self.engine, self.engine.trt.cuda.memory
        if set(self.shapes) != set(e.inputs):
            return False
        feeds = {name: memory[self.addresses[name]][: int(np.prod(shape))].view(np.uint8).reshape(shape)
                 for name, shape in self.shapes.items()}
        for name, value in zip(e.outputs, e.session.run(list(e.outputs), feeds)):
            raw = np.ascontiguousarray(value, np.float32).view(np.uint8).ravel()
            memory[self.addresses[name]][: raw.size] = raw
        return True


# -- the module -------------------------------------------------------------------------------------

FAKE_MODULE: list = []


def make_tensorrt(version: str = "10.3.0", cuda: FakeCuda | None = None):
    """A fake `tensorrt` module of `version` ("10.x": builder flags and DLA; "11.x": no FP16/INT8 flags)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.cuda = cuda or FakeCuda()
    major = int(version.split(".")[0])
    minor = int(version.split(".")[1])
    trt.has_dla = major == 10 and minor <= 7
    trt.build_log, trt.runtimes, trt.last_build = [], [], None
    trt.cache_key = lambda: f"FAKE-TC:{version}:{trt.cuda.gpu[1]}".encode()
    trt.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda self, severity=2: None})
    flags = ["TF32", "GPU_FALLBACK", "VERSION_COMPATIBLE"] + (
        ["FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS"] if major == 10 else [])
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
    trt.LayerType = types.SimpleNamespace(CONSTANT="CONSTANT", SHAPE="SHAPE", CAST="CAST")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.float32, trt.float16, trt.int8, trt.int32, trt.int64, trt.bool, trt.uint8 = (
        FLOAT, HALF, INT8, INT32, INT64, BOOL, UINT8)
    trt.nptype = lambda dtype: dtype.np_type
    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    FAKE_MODULE[:] = [trt]
    return trt
