"""Our EfficientNet-Lite reproduces the reference package on a real photo; WRN-50 shapes."""
import cv2
import numpy as np
import pytest
import torch

from export.backbones import EfficientNetLite, WideResNet50, build_teacher, lite_weights_path

skimage_data = pytest.importorskip("skimage.data")
reference = pytest.importorskip("efficientnet_lite_pytorch")


def chelsea_input(size=224):
    img = cv2.resize(skimage_data.chelsea(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    mean, std = np.array(EfficientNetLite.mean, np.float32), np.array(EfficientNetLite.std, np.float32)
    return torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)[None].copy())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_logits_match_reference_on_chelsea(name):
    x = chelsea_input()
    ours = EfficientNetLite(name, (224, 224), features_only=False).load_pretrained().eval()
    ref_name = name.replace("_", "-")
    ref = reference.EfficientNet.from_pretrained(ref_name, weights_path=str(lite_weights_path(name)),
                                                 image_size=224).eval()
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()
    assert 281 <= int(a.argmax()) <= 285  # a tabby cat


@pytest.mark.parametrize("name,channels", [("efficientnet_lite0", [24, 40, 112]), ("efficientnet_lite2", [24, 48, 120])])
@pytest.mark.parametrize("hw", [(256, 256), (192, 448), (96, 160)])
def test_lite_feature_pyramid(name, channels, hw):
    net = build_teacher(name, hw)
    assert [fi.channels for fi in net.feature_info] == channels
    assert [fi.stride for fi in net.feature_info] == [4, 8, 16]
    with torch.no_grad():
        feats = net(torch.rand(2, 3, *hw))
    for f, fi in zip(feats, net.feature_info):
        assert f.shape == (2, fi.channels, hw[0] // fi.stride, hw[1] // fi.stride)
    assert not any(p.requires_grad for p in net.parameters())


def test_lite_exports_to_onnx_without_shape_ops(tmp_path):
    onnx = pytest.importorskip("onnx")
    net = build_teacher("efficientnet_lite0", (128, 128))
    path = tmp_path / "lite0.onnx"
    torch.onnx.export(net, torch.rand(1, 3, 128, 128), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["f4", "f8", "f16"])
    from sdk.build.onnx_utils import fold_constants

    model = fold_constants(onnx.load(str(path)))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "Gather", "Slice", "ConstantOfShape", "Concat"}, ops
    assert "Conv" in ops
    ort = pytest.importorskip("onnxruntime")
    x = torch.rand(1, 3, 128, 128)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x)
    for got, want in zip(sess.run(None, {"x": x.numpy()}), expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_wide_resnet50_shapes_and_state_dict_loading(tmp_path):
    net = WideResNet50()
    assert [fi.channels for fi in net.feature_info] == [256, 512, 1024]
    path = tmp_path / "wrn.pth"
    torch.save({**net.state_dict(), "fc.weight": torch.zeros(1000, 2048)}, path)  # torchvision files carry fc
    loaded = build_teacher("wide_resnet50_2", (128, 128), weights=path)
    with torch.no_grad():
        feats = loaded(torch.rand(1, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 32, 32), (512, 16, 16), (1024, 8, 8)]


def test_wide_resnet50_needs_a_weights_file():
    with pytest.raises(ValueError, match="--teacher-weights"):
        build_teacher("wide_resnet50_2", (128, 128))
