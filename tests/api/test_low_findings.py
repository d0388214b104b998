"""Issue 9, "Low": hostile headers in .npz files, external data hidden in ONNX functions, server
paths in error messages, Range errors and security headers, names with slashes, unbounded list
params. Each test talks to the real API (embedded and PostgreSQL deployments)."""

from __future__ import annotations

import io
import zipfile

import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from app.main import create_app
from app.reports.render import CSP
from app.settings import Settings

PROBLEM = "application/problem+json"


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == PROBLEM, r.headers
    return r.json()


# --- .npz headers --------------------------------------------------------------------------

def _npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    """A .npy header (format 1.0) declaring ``shape``, written by hand so it can lie; no data."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _npz(**headers: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in headers.items():
            z.writestr(f"{name}.npy", data)
    return buf.getvalue()


HOSTILE_SHAPES = {
    "negative-samples": (-5, 64),
    "negative-feature": (64, -5),
    "wraps-int64-to-zero": (2**33, 2**31),  # 2**64 elements: np.int64 arithmetic says 0
    "wraps-with-itemsize": (2**62, 4),
    "beyond-int64": (2**70,),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SHAPES))
def test_npz_with_hostile_shape_is_refused(api, case):
    r = api.post("/v1/datasets", files={"file": ("d.npz", _npz(x=_npy_header(HOSTILE_SHAPES[case])))})
    body = _problem(r, 422)
    assert "'x'" in body["detail"], body
    assert api.get("/v1/datasets").json()["items"] == []


def test_npz_total_is_exact_across_arrays(api, deployment):
    """Each array fits, together they do not: the sum is compared, not each term."""
    limit = deployment.settings.max_dataset_uncompressed_bytes
    half = limit // 2 // 4 + 1  # float32 elements: two arrays of this many are just over the limit
    r = api.post("/v1/datasets", files={"file": ("d.npz", _npz(x=_npy_header((half, 1)), labels=_npy_header((half,))))})
    body = _problem(r, 422)
    assert "'labels'" in body["detail"] and str(limit) in body["detail"], body


# --- ONNX: external data wherever a TensorProto can live; no server paths in errors -----------

def _external(name: str, location: str = "../../etc/passwd") -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1, 4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "16"}.items():
        t.external_data.add(key=k, value=v)
    return t


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)]


def _with_function(nodes: list, **kw) -> onnx.ModelProto:
    fn = helper.make_function("custom", "F", ["x"], ["y"], nodes, [helper.make_opsetid("", 17)], **kw)
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="custom")], "g", [X], [Y])
    return helper.make_model(graph, functions=[fn], opset_imports=OPSETS)


def _function_constant(location: str = "../../etc/passwd") -> onnx.ModelProto:
    return _with_function([helper.make_node("Constant", [], ["c"], value=_external("c", location)),
                           helper.make_node("Add", ["x", "c"], ["y"])])


def _function_sparse_constant() -> onnx.ModelProto:
    values = _external("v")
    values.dims[:] = [4]
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [4], [0, 1, 2, 3]), [1, 4])
    return _with_function([helper.make_node("Constant", [], ["c"], sparse_value=sparse),
                           helper.make_node("Add", ["x", "c"], ["y"])])


def _function_subgraph() -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Constant", [], ["t"], value=_external("t"))], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    return _with_function([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                           helper.make_node("Cast", ["s"], ["b"], to=TensorProto.BOOL),
                           helper.make_node("If", ["b"], ["y"], then_branch=then, else_branch=other)])


def _function_attribute_default() -> onnx.ModelProto:
    model = _with_function([helper.make_node("Identity", ["x"], ["y"])])
    default = model.functions[0].attribute_proto.add()
    default.CopyFrom(helper.make_attribute("scale", _external("s")))
    return model


def _training_info() -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [X], [Y]),
                              opset_imports=OPSETS[:1])
    model.training_info.add().initialization.CopyFrom(helper.make_graph([], "init", [], [], [_external("w")]))
    return model


EXTERNAL_ELSEWHERE = {
    "function-constant": _function_constant,
    "function-constant-inside-folder": lambda: _function_constant("w.bin"),
    "function-sparse-constant": _function_sparse_constant,
    "function-subgraph": _function_subgraph,
    "function-attribute-default": _function_attribute_default,
    "training-info": _training_info,
}


def _leaks(text: str, deployment) -> list[str]:
    s = deployment.settings
    needles = {str(s.data_dir), str(s.resolved_data_dir), str(s.artifact_root), ".staging"}
    return [n for n in needles if n in text]


@pytest.mark.parametrize("case", sorted(EXTERNAL_ELSEWHERE))
def test_external_data_anywhere_in_onnx_is_refused(api, deployment, case):
    r = api.post("/v1/models", files={"file": ("m.onnx", EXTERNAL_ELSEWHERE[case]().SerializeToString())})
    body = _problem(r, 422)
    assert "external data" in body["detail"], body
    assert _leaks(r.text, deployment) == []
    assert api.get("/v1/models").json()["items"] == []


def _checker_complaints() -> dict[str, bytes]:
    """Models the ONNX checker refuses for reasons other than external data."""
    undefined = helper.make_graph([helper.make_node("Add", ["x", "nowhere"], ["y"])], "g", [X], [Y])
    unknown_op = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [X], [Y])
    bad_attr = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], alpha=1.0)], "g", [X], [Y])
    no_opset = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [X], [Y]))
    del no_opset.opset_import[:]
    return {"undefined-input": helper.make_model(undefined).SerializeToString(),
            "unknown-op": helper.make_model(unknown_op).SerializeToString(),
            "bad-attribute": helper.make_model(bad_attr).SerializeToString(),
            "no-opset": no_opset.SerializeToString()}


def test_checker_errors_never_name_server_paths(api, deployment):
    for case, data in _checker_complaints().items():
        r = api.post("/v1/models", files={"file": ("m.onnx", data)})
        body = _problem(r, 422)
        assert "checker" in body["detail"], (case, body)
        assert _leaks(r.text, deployment) == [], (case, r.text)


def test_no_error_detail_names_the_data_dir(tmp_path):
    """Whatever a third-party message says, the problem+json a client gets never names the
    server's folders (the last line of defence behind the checks above)."""
    from app.errors import InvalidModel

    settings = Settings(data_dir=tmp_path / "data")
    app = create_app(settings)
    app.state.settings = settings

    @app.get("/leak")
    def leak() -> None:
        raise InvalidModel(f"could not open {settings.artifact_root}/.staging/tmpab12 (in {settings.resolved_data_dir})")

    r = TestClient(app).get("/leak")
    body = _problem(r, 422)
    assert str(tmp_path) not in r.text and "<server>" in body["detail"], body


# --- downloads: Range errors, security headers ------------------------------------------------

def _tiny_model() -> bytes:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_range_errors_are_problem_json(api):
    data = _tiny_model()
    model = api.post("/v1/models", files={"file": ("m.onnx", data)}).json()
    url = f"/v1/models/{model['id']}/file"
    for bad in (f"bytes={len(data)}-", "bytes=9-2", "bytes=abc", "bytes=-"):
        r = api.get(url, headers={"Range": bad})
        body = _problem(r, 416)
        assert r.headers["content-range"] == f"bytes */{len(data)}", (bad, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert body["instance"] == url
    # A unit the server does not know is ignored (RFC 9110 14.2): the whole file.
    whole = api.get(url, headers={"Range": "items=0-1"})
    assert whole.status_code == 200 and whole.content == data
    part = api.get(url, headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == data[:4]


def test_every_response_says_nosniff(api, deployment):
    model = api.post("/v1/models", files={"file": ("m.onnx", _tiny_model())}).json()
    responses = [
        api.get("/v1/models"),                                   # JSON
        api.get(f"/v1/models/{model['id']}/file"),               # a file
        api.get("/v1/models/nope"),                              # 404 problem
        deployment.client.get("/v1/models"),                     # 401 problem
        api.post("/v1/jobs", json={"model_id": 1}),              # 422 validation
        api.post("/v1/jobs", content=b"x" * (2 * 1024 * 1024)),  # 413 from the body limit
        deployment.client.get("/docs"),                          # HTML
        deployment.client.get("/openapi.json"),
    ]
    for r in responses:
        assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.status_code, r.headers)


def test_unexpected_500_says_nosniff(tmp_path):
    app = create_app(Settings(data_dir=tmp_path))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500 and r.headers.get("x-content-type-options") == "nosniff"


def test_report_page_sends_its_csp_as_a_header(api):
    model = api.post("/v1/models", files={"file": ("m.onnx", _tiny_model())}).json()
    job = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "params": {
        "batch_sizes": [1], "min_runs": 1, "min_seconds": 0, "warmup": 1}}).json()
    assert api.wait_job(job["id"])["status"] == "succeeded"
    r = api.get(f"/v1/jobs/{job['id']}/report.html")
    assert r.status_code == 200
    policy = r.headers.get("content-security-policy", "")
    assert policy.startswith(CSP) and "frame-ancestors 'none'" in policy, r.headers
    assert f'content="{CSP}"' in r.text  # the meta tag stays for a saved copy opened from disk
    assert r.headers["x-content-type-options"] == "nosniff"


# --- names ------------------------------------------------------------------------------------

def test_a_name_with_a_slash_is_kept_and_downloads_safely(api):
    """A name is a display name (files are stored by hash): "team/resnet" stays "team/resnet"."""
    for route, data, suffix in (("/v1/models", _tiny_model(), ".onnx"),
                                ("/v1/datasets", _npz_real(), ".npz")):
        r = api.post(route, files={"file": ("ignored" + suffix, data)}, data={"name": "team/v2\\final\x07"})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "team/v2\\final"  # control characters go, the rest is the user's
        download = api.get(f"{route}/{r.json()['id']}/file")
        disposition = download.headers["content-disposition"]
        assert "/" not in disposition and "\\" not in disposition and "team_v2_final" in disposition, disposition
    # Without a name, the upload's file name is used: a client that sends a path gets its last part.
    r = api.post("/v1/models", files={"file": ("some/dir/m.onnx", _tiny_model())})
    assert r.json()["name"] == "m.onnx"


def _npz_real() -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, x=np.ones((2, 4), np.float32))
    return buf.getvalue()


# --- list params ------------------------------------------------------------------------------

def test_huge_dims_mapping_is_refused(api):
    model = api.post("/v1/models", files={"file": ("m.onnx", _tiny_model())}).json()
    dims = {f"d{i}": 1 for i in range(40_000)}
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "params": {"dims": dims}})
    body = _problem(r, 422)
    assert "dims" in body["detail"], body
    assert api.get("/v1/jobs").json()["items"] == []


def _unbounded(schema: dict, defs: dict, where: str, seen: set[str]) -> list[str]:
    """Every array, open-ended object and free string in a JSON Schema without an upper bound."""
    found = []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen:
            found += _unbounded(defs[name], defs, f"{where}->{name}", seen | {name})
    kind = schema.get("type")
    if kind == "array" and "maxItems" not in schema:
        found.append(f"{where}: array without maxItems")
    if kind == "object" and schema.get("additionalProperties") not in (None, False) and "maxProperties" not in schema:
        found.append(f"{where}: mapping without maxProperties")
    if kind == "string" and not {"maxLength", "enum", "const"} & schema.keys():
        found.append(f"{where}: string without maxLength")
    for key, value in schema.items():
        if key == "$defs":
            continue
        if isinstance(value, dict):
            found += _unbounded(value, defs, f"{where}.{key}", seen)
        elif isinstance(value, list):
            found += [f for i, v in enumerate(value) if isinstance(v, dict)
                      for f in _unbounded(v, defs, f"{where}.{key}[{i}]", seen)]
    return found


def test_every_technique_param_is_bounded(api):
    """A future list (or mapping, or string) param cannot forget its bound: every one is listed."""
    items = api.get("/v1/techniques").json()["items"]
    assert len(items) >= 10
    problems = [p for t in items for p in _unbounded(t["params_schema"], t["params_schema"].get("$defs", {}),
                                                      t["name"], set())]
    assert problems == []


def test_a_longest_name_survives_a_job_that_derives_an_output_name(api):
    """The output of a job on a 255-character name is named from it: still within the column."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.5] * 16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    model = api.post("/v1/models", files={"file": ("m.onnx", data)}, data={"name": "n" * 255}).json()
    job = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "quantize.fp16", "params": {
        "batch_sizes": [1], "min_runs": 1, "min_seconds": 0, "warmup": 1, "fidelity_samples": 2}}).json()
    job = api.wait_job(job["id"])
    assert job["status"] == "succeeded", job["error"]
    output = api.get(f"/v1/models/{job['output_model_id']}").json()
    name = output["name"]
    assert len(name) <= 255 and name.startswith("n" * 100) and name.endswith("n.quantize.fp16.onnx"), name


def test_job_errors_never_name_server_paths(tmp_path):
    """The worker writes job errors through the same filter as the API's problem details."""
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    detail = f"could not read {settings.resolved_data_dir}/work/j1/model.onnx or {settings.artifact_root}/ab/abc"
    assert settings.without_server_paths(detail) == "could not read <server>/work/j1/model.onnx or <server>/ab/abc"
