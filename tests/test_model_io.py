import onnx
import pytest
from onnx import TensorProto, numpy_helper

import onnx_models
from edgequant import model as model_io
from edgequant.errors import EdgequantError


def test_load_and_describe(conv_model):
    model = model_io.load_model(conv_model)
    info = model_io.describe(model, conv_model)
    assert info.opset == 12
    assert [s.name for s in info.inputs] == ["input"]
    assert info.inputs[0].shape == ("N", 3, 16, 16) and not info.inputs[0].is_static
    assert info.op_counts["Conv"] == 3 and not info.is_quantized


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"hello, I am a text file\n" * 20, "not a valid ONNX model|not an ONNX model|invalid ONNX"),
])
def test_bad_files_give_one_line(tmp_path, content, reason):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(EdgequantError, match=reason) as exc:
        model_io.load_model(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_model_is_refused(conv_model):
    data = conv_model.read_bytes()
    for cut in (len(data) // 2, len(data) - 7, 100):
        conv_model.write_bytes(data[:cut])
        with pytest.raises(EdgequantError, match="bad|invalid|not"):
            model_io.load_model(conv_model)


def test_missing_file():
    with pytest.raises(EdgequantError, match="no such file"):
        model_io.load_model("/definitely/not/here.onnx")


def _external_model(tmp_path, location):
    model = onnx_models.matmul_net()
    for t in model.graph.initializer:
        if t.name == "w1":
            raw = numpy_helper.to_array(t).tobytes()
            t.ClearField("float_data")
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            return model, raw
    raise AssertionError


def test_external_data_inside_folder_loads(tmp_path):
    model, raw = _external_model(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(raw)
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path))
    loaded = model_io.load_model(path)
    w1 = next(t for t in loaded.graph.initializer if t.name == "w1")
    assert numpy_helper.to_array(w1).shape == (64, 256)


@pytest.mark.parametrize("location", ["../escape.bin", "/etc/passwd"])
def test_external_data_escaping_folder_is_refused(tmp_path, location):
    sub = tmp_path / "m"
    sub.mkdir()
    model, raw = _external_model(sub, location)
    (tmp_path / "escape.bin").write_bytes(raw)
    path = sub / "ext.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(EdgequantError, match="outside the model's folder"):
        model_io.load_model(path)


def test_opset_upgrade_for_per_channel(conv_model):
    model = model_io.load_model(conv_model)
    up = model_io.upgrade_opset(model, 13)
    assert model_io.default_opset(up) == 13
    assert model_io.upgrade_opset(up, 13) is up


def test_save_is_atomic_and_refuses_input(tmp_path, conv_model):
    model = model_io.load_model(conv_model)
    before = conv_model.read_bytes()
    with pytest.raises(EdgequantError, match="output path is the input"):
        model_io.save_model(model, conv_model, inputs=(conv_model,))
    assert conv_model.read_bytes() == before
    out = model_io.save_model(model, tmp_path / "sub" / "copy.onnx", inputs=(conv_model,))
    assert model_io.sha256_file(out) == model_io.sha256_file(conv_model)
    assert [p.name for p in out.parent.iterdir()] == ["copy.onnx"]  # no temp files left behind


def test_copy_model_brings_its_external_data_under_its_own_name(tmp_path) -> None:
    """tune publishes cached candidates (each 'model.onnx' + 'model.onnx.data') side by side under
    readable names: each copy must get its own data file (a plain copy lost the weights)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgequant.model import copy_model

    out = tmp_path / "published"
    out.mkdir()
    for i, name in enumerate(("dynamic", "static")):
        folder = tmp_path / f"cache{i}"
        folder.mkdir()
        w = numpy_helper.from_array(np.full((4, 4), float(i + 1), np.float32), "W")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
        onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(folder / "model.onnx"),
                        save_as_external_data=True, location="model.onnx.data", size_threshold=0)
        copy_model(folder / "model.onnx", out / f"m.{name}.onnx")
        assert (folder / "model.onnx.data").is_file()                    # the source keeps its data
    assert sorted(p.name for p in out.iterdir()) == ["m.dynamic.onnx", "m.dynamic.onnx.data",
                                                     "m.static.onnx", "m.static.onnx.data"]
    for i, name in enumerate(("dynamic", "static")):
        sess = ort.InferenceSession(str(out / f"m.{name}.onnx"), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"x": np.ones((1, 4), np.float32)})[0][0, 0] == 4.0 * (i + 1)
