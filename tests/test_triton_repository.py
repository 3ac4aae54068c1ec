"""`cfrg triton`: the model repository entry, parsed with Triton Inference Server's own ModelConfig schema (the
protobuf that tritonclient ships), checked against the ONNX graph ONNX Runtime loads from the repository.

The engine cases build their engine with the rule-enforcing fake TensorRT (tests/fake_tensorrt.py): they prove
what the config says about an engine of `cfrg build`, not that a Triton server loads a real plan."""
import json
import shutil

import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from sdk import ModelInfo
from sdk.cli import EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, main
from sdk.triton import repository
from tests.test_tensorrt_backend_fake import _build, _install, model  # noqa: F401  (model: a fixture)


def _config(folder) -> model_config_pb2.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_an_onnx_model_becomes_an_onnxruntime_entry_triton_parses_and_the_graph_matches(model, tmp_path, capsys):
    repo = tmp_path / "repo"
    code = main(["triton", "--model", str(model), "--repository", str(repo), "--name", "ball_screw",
                 "--max-batch", "8", "--queue-delay-us", "250", "--instances", "2"])
    assert code == 0 and "backend onnxruntime, max batch 8, preferred [2, 4, 8]" in capsys.readouterr().out
    config = _config(repo / "ball_screw")
    assert (config.name, config.backend, config.max_batch_size) == ("ball_screw", "onnxruntime", 8)
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    served = repo / "ball_screw" / "1" / "model.onnx"
    assert served.read_bytes() == model.read_bytes()
    session = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    graph_in = {i.name: i for i in session.get_inputs()}
    graph_out = {o.name: o for o in session.get_outputs()}
    (cin,) = config.input
    assert cin.data_type == model_config_pb2.TYPE_UINT8 and graph_in[cin.name].type == "tensor(uint8)"
    assert list(cin.dims) == graph_in[cin.name].shape[1:]  # the batch dimension is max_batch_size's
    outputs = {o.name: o for o in config.output}
    assert set(outputs) == set(graph_out) == {"anomaly_map", "score"}
    assert all(o.data_type == model_config_pb2.TYPE_FP32 and graph_out[n].type == "tensor(float)"
               for n, o in outputs.items())
    assert list(outputs["anomaly_map"].dims) == graph_out["anomaly_map"].shape[1:]
    assert len(graph_out["score"].shape) == 1  # (N,): Triton takes it as [1] reshaped to []
    assert list(outputs["score"].dims) == [1] and outputs["score"].HasField("reshape")
    assert list(outputs["score"].reshape.shape) == []
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    described = repository.description_from_parameters(parameters)
    assert described == ModelInfo.read(model)  # thresholds, normalisation, colour order, provenance
    assert json.loads(parameters["cfrg_model_json"])["thresholds"] == json.loads(model.with_suffix(".json")
                                                                                .read_text())["thresholds"]


def test_an_engine_becomes_a_tensorrt_entry_on_the_gpu_within_its_batch_range(model, tmp_path, monkeypatch, capsys):
    _install(monkeypatch, version="10.3.0")
    code, engine = _build(model, "--fp16", "--maxShapes=frames:4x64x128x3", name="model.fp16-gpu.engine")
    assert code == 0
    repo = tmp_path / "repo"
    code = main(["triton", "--model", str(engine), "--repository", str(repo), "--max-batch", "8"])
    assert code == EXIT_USAGE and "takes batches up to 4" in capsys.readouterr().err and not (repo / "model").exists()
    assert main(["triton", "--model", str(engine), "--repository", str(repo), "--kind", "cpu"]) == EXIT_USAGE
    assert main(["triton", "--model", str(engine), "--repository", str(repo), "--max-batch", "4"]) == 0
    assert "the server must run TensorRT 10.3.0" in capsys.readouterr().out
    config = _config(repo / "model")
    assert (config.backend, config.max_batch_size, list(config.dynamic_batching.preferred_batch_size)) == \
        ("tensorrt", 4, [2, 4])
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert (repo / "model" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert repository.description_from_parameters(parameters).engine["tensorrt"] == "10.3.0"


def test_a_dla_engine_of_one_batch_size_is_refused(model, tmp_path, monkeypatch, capsys):
    _install(monkeypatch, version="10.3.0")
    code, engine = _build(model, "--int8", "--useDLACore=0", "--allowGPUFallback", "--minShapes=frames:2x64x128x3",
                          "--optShapes=frames:2x64x128x3", "--maxShapes=frames:2x64x128x3", name="dla.engine")
    assert code == 0
    capsys.readouterr()
    assert main(["triton", "--model", str(engine), "--repository", str(tmp_path / "repo"), "--max-batch", "2"]) \
        == EXIT_USAGE
    assert "batches of 2 to 2 only" in capsys.readouterr().err


def test_refusals_name_the_problem_and_leave_the_repository_as_it_was(model, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    (repo / "model" / "1").mkdir(parents=True)
    (repo / "model" / "config.pbtxt").write_text("an earlier entry")
    assert main(["triton", "--model", str(model), "--repository", str(repo)]) == EXIT_OUTPUT
    assert "already exists: pass another --name" in capsys.readouterr().err
    assert (repo / "model" / "config.pbtxt").read_text() == "an earlier entry"
    assert main(["triton", "--model", str(model), "--repository", str(repo), "--name", "a/b"]) == EXIT_USAGE
    assert "one folder name" in capsys.readouterr().err
    assert main(["triton", "--model", str(tmp_path / "none.onnx"), "--repository", str(repo), "--name", "x"]) \
        == EXIT_MODEL
    assert main(["triton", "--model", str(model), "--repository", str(repo), "--name", "x",
                 "--max-batch", "4", "--preferred-batch", "8"]) == EXIT_USAGE
    lone = tmp_path / "lone.onnx"
    shutil.copy(model, lone)  # no lone.json beside it: the description inside the graph is used
    assert main(["triton", "--model", str(lone), "--repository", str(repo), "--name", "lone"]) == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(repository.shutil, "copyfile", interrupted)
    assert main(["triton", "--model", str(model), "--repository", str(repo), "--name", "cut"]) == 130
    assert sorted(p.name for p in repo.iterdir()) == ["lone", "model"]  # nothing half-written, no staging left
