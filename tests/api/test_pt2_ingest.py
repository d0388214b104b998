"""torch.export archives are data: checked statically in the API (no torch there), built from
checked parts in the worker, never given to ``torch.export.load`` or any unpickler.

Every hostile archive below carries a payload that creates a file if it ever runs. Each is
refused at upload (422) and by the worker's own loader, and the file never appears.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from app.engine.runtime.pt2_archive import UnsafeArchive, read_manifest


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def clean_pt2(cnn_pt2) -> Path:
    return cnn_pt2[0]


def rewrite(clean: Path, edit: Callable[[dict[str, bytes], str], None]) -> bytes:
    """The clean archive with its members edited as an attacker would (``edit(members, root)``)."""
    with zipfile.ZipFile(clean) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    root = next(iter(members)).split("/", 1)[0]
    edit(members, root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    return buf.getvalue()


def _edit_json(members: dict[str, bytes], name: str, fn: Callable[[dict], None]) -> None:
    doc = json.loads(members[name])
    fn(doc)
    members[name] = json.dumps(doc).encode()


def _weights(root: str) -> str:
    return f"{root}/data/weights/model_weights_config.json"


def _first_weight(doc: dict) -> dict:
    return next(iter(doc["config"].values()))


def torch_save_zip(obj) -> bytes:
    """What ``torch.save`` writes, made without torch: a zip whose data.pkl is a pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def hostile_variants(marker: str) -> dict[str, Callable[[dict[str, bytes], str], None]]:
    """Each way found (or found since) to make torch.export.load run a payload."""
    payload = Payload(marker)

    def use_pickle_protocol(protocol: int):
        def edit(m, root):
            _edit_json(m, _weights(root), lambda d: _first_weight(d).update(use_pickle=True))
            m[f"{root}/data/weights/weight_0"] = pickle.dumps(payload, protocol=protocol)
        return edit

    def alias(weight: bytes):
        def edit(m, root):
            def add(d):
                first = _first_weight(d)
                d["config"]["evil"] = {**first, "use_pickle": True}
                first["path_name"] = "weight_0"
            _edit_json(m, _weights(root), add)
            m[f"{root}/data/weights/weight_0"] = weight
        return edit

    def expr(m, root):
        def inject(d):
            sizes = [v["sizes"] for v in d["graph_module"]["graph"]["tensor_values"].values()]
            symbolic = next(dim for dims in sizes for dim in dims if "as_expr" in dim)
            symbolic["as_expr"]["expr_str"] = f"__import__('os').system('touch {marker}')"
        _edit_json(m, f"{root}/models/model.json", inject)

    def target(m, root):
        def inject(d):
            node = d["graph_module"]["graph"]["nodes"][-1]
            node["target"] = "torch.os.system"
            node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]
        _edit_json(m, f"{root}/models/model.json", inject)

    def opaque_constant(m, root):
        _edit_json(m, f"{root}/data/constants/model_constants_config.json",
                   lambda d: d["config"].update(c={"path_name": "opaque_obj_0", "is_param": False,
                                                   "use_pickle": True, "tensor_meta": None}))
        m[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(payload, protocol=4)

    def stray_member(m, root):
        m[f"{root}/data/weights/weight_99"] = pickle.dumps(payload, protocol=4)

    def unknown_key(m, root):
        _edit_json(m, _weights(root), lambda d: _first_weight(d).update(loader="pickle"))

    return {
        "use_pickle, protocol 0": use_pickle_protocol(0),
        "use_pickle, protocol 1": use_pickle_protocol(1),
        "use_pickle, protocol 4": use_pickle_protocol(4),
        "alias, protocol-2 pickle": alias(pickle.dumps(payload, protocol=2)),
        "alias, nested torch.save zip": alias(torch_save_zip(payload)),
        "sympy expression": expr,
        "attribute-walked target": target,
        "opaque constant": opaque_constant,
        "unreferenced pickle member": stray_member,
        "unknown config key": unknown_key,
    }


VARIANTS = list(hostile_variants("x"))


def test_clean_pt2_is_accepted(api, clean_pt2):
    r = api.post("/v1/models", files={"file": ("cnn.pt2", clean_pt2.read_bytes())})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "pt2" and body["parameter_count"] == 4 * 9 + 4 + 144 * 10 + 10
    assert body["meta"]["tensors_checked"] == 4
    d = api.get(f"/v1/models/{body['id']}/file")
    assert d.content == clean_pt2.read_bytes() and 'filename="cnn.pt2"' in d.headers["content-disposition"]
    # An ONNX child is queued on upload, so every ONNX technique applies to the program.
    job = api.wait_job(body["meta"]["conversion_job_id"], timeout=180)
    assert job["status"] == "succeeded" and job["technique"] == "convert.onnx", job
    child = api.get(f"/v1/models/{job['output_model_id']}").json()
    assert child["format"] == "onnx" and child["parent_id"] == body["id"]
    assert child["inputs"][0]["shape"][1:] == [1, 8, 8] and child["outputs"][0]["shape"][-1] == 10


@pytest.mark.parametrize("variant", VARIANTS)
def test_hostile_pt2_is_refused_at_upload_and_never_runs(api, clean_pt2, tmp_path, variant):
    marker = tmp_path / "payload-ran"
    evil = rewrite(clean_pt2, hostile_variants(str(marker))[variant])
    r = api.post("/v1/models", files={"file": ("evil.pt2", evil)})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert api.get("/v1/models").json()["items"] == []
    assert not marker.exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_loader_refuses_hostile_pt2_and_never_runs(clean_pt2, tmp_path, variant):
    """Defence in depth: the worker's loader checks again, as if the upload check were bypassed
    (an archive stored by an older version, or a bug in the API)."""
    from app.engine.errors import UnsupportedModel
    from app.engine.pytorch.loading import load_pt2

    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(rewrite(clean_pt2, hostile_variants(str(marker))[variant]))
    with pytest.raises(UnsupportedModel, match="refused"):
        load_pt2(path)
    assert not marker.exists()


def test_pickled_sample_inputs_are_never_read(api, clean_pt2, tmp_path):
    """``torch.export.load`` reads the sample inputs with a ``weights_only=False`` fallback. Lathe
    never reads them (it generates inputs from the signature), so an archive whose sample inputs
    are a payload converts, and the payload never runs."""
    marker = tmp_path / "payload-ran"

    def edit(m, root):
        m[f"{root}/data/sample_inputs/model.pt"] = torch_save_zip(Payload(str(marker)))

    r = api.post("/v1/models", files={"file": ("cnn.pt2", rewrite(clean_pt2, edit))})
    assert r.status_code == 201, r.text
    job = api.wait_job(r.json()["meta"]["conversion_job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    assert not marker.exists()


def test_guard_code_is_never_run(clean_pt2, tmp_path):
    """Real exports carry ``guards_code`` (Python source checking input shapes, e.g.
    ``L['y'].size()[0] <= L['x'].size()[0]``) that torch compiles into the unlifted module.
    Lathe accepts such archives but drops the guards: its own inputs satisfy the shapes."""
    from app.engine.pytorch.loading import example_inputs, load_pt2

    marker = tmp_path / "payload-ran"

    def edit(m, root):
        _edit_json(m, f"{root}/models/model.json",
                   lambda d: d.update(guards_code=[f"__import__('os').system('touch {marker}')"]))

    path = tmp_path / "guarded.pt2"
    path.write_bytes(rewrite(clean_pt2, edit))
    program = load_pt2(path)
    program.module()(*example_inputs(program))
    assert program._guards_code == [] and not marker.exists()


def test_tied_weights_stay_tied(tmp_path):
    """Two entries on one raw file (tied weights, as in GPT-2) are data, not an attack: both
    views share one storage after loading."""
    import torch

    from app.engine.pytorch.loading import example_inputs, load_pt2

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 4, bias=False)
            self.b = torch.nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    model = Tied().eval()
    path = tmp_path / "tied.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), str(path))
    program = load_pt2(path)
    (x,) = example_inputs(program)
    assert torch.allclose(program.module()(x), model(x))
    assert read_manifest(path).parameter_count == 16


def test_view_past_the_end_of_its_bytes_is_refused(clean_pt2, tmp_path):
    def edit(m, root):
        _edit_json(m, _weights(root), lambda d: _first_weight(d)["tensor_meta"].update(
            storage_offset={"as_int": 10_000}))

    path = tmp_path / "oob.pt2"
    path.write_bytes(rewrite(clean_pt2, edit))
    with pytest.raises(UnsafeArchive, match="needs .* bytes"):
        read_manifest(path)


def test_pt2_zip_bomb_is_refused(api, clean_pt2, tmp_path):
    bomb = io.BytesIO()
    with zipfile.ZipFile(clean_pt2) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("cnn/extra/huge", b"\0" * (200 << 20))
    r = api.post("/v1/models", files={"file": ("bomb.pt2", bomb.getvalue())})
    assert r.status_code == 422 and "zip bomb" in r.json()["detail"]
    (tmp_path / "bomb.pt2").write_bytes(bomb.getvalue())  # the worker's own check refuses it too
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        read_manifest(tmp_path / "bomb.pt2")
