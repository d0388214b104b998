from __future__ import annotations

import pytest

from app.engine.runtime.model_info import inspect_onnx
from app.engine.errors import UnsupportedModel

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_mlp_fields(models):
    info = inspect_onnx(models["mlp"])
    assert info["inputs"] == [{"name": "x", "shape": ["batch", 128], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "out", "shape": ["batch", 10], "dtype": "float32"}]
    assert info["parameter_count"] == 128 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert isinstance(info["opset"], int) and info["opset"] >= 13
    assert info["producer"].startswith("pytorch")
    assert isinstance(info["ir_version"], int)
    assert info["op_types"] == {"Gemm": 3, "Relu": 2}


def test_token_model_dtypes_and_symbols(models):
    info = inspect_onnx(models["tokens"])
    by_name = {i["name"]: i for i in info["inputs"]}
    assert by_name["input_ids"] == {"name": "input_ids", "shape": ["batch", "seq_len"],
                                    "dtype": "int64"}
    assert by_name["attention_mask"]["dtype"] == "int64"


def test_odd_input_name(models):
    assert inspect_onnx(models["odd_names"])["inputs"][0]["name"] == "input/ids:0"


def test_initializer_inputs_not_listed(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # Old exporters listed weights as graph inputs too; they are not user inputs.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.1] * 8)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [x, w_in], [y], [w])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    info = inspect_onnx(path)
    assert [i["name"] for i in info["inputs"]] == ["x"]
    assert info["inputs"][0]["shape"] == [None, 4]
    assert info["parameter_count"] == 8


def test_external_data_refused(models, tmp_path):
    import onnx

    model = onnx.load(models["mlp"])
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, size_threshold=0,
                    location="ext.onnx.data")
    with pytest.raises(UnsupportedModel, match="external data.*one file"):
        inspect_onnx(path)


def test_external_data_in_constant_node_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor("c", TensorProto.FLOAT, [2], [1.0, 2.0])
    value.data_location = TensorProto.EXTERNAL
    value.ClearField("float_data")
    entry = value.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=value)], "g",
                              [], [y])
    path = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(UnsupportedModel, match="external data"):
        inspect_onnx(path)


def test_checker_failure(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    # "missing" is produced by nothing: the checker must reject the graph.
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g", [x], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(UnsupportedModel, match="checker") as err:
        inspect_onnx(path)
    assert "\n" not in err.value.detail and "Traceback" not in err.value.detail


def test_not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xffnot a protobuf" * 10)
    with pytest.raises(UnsupportedModel, match="not a readable ONNX"):
        inspect_onnx(path)
