"""The Keras allow-list scan (``app.engine.runtime.keras_archive``) and the worker's defence in
depth: convert.onnx checks a Keras file again in its confined child before Keras sees it."""

from __future__ import annotations

import json

import pytest

from app.engine import catalog
from app.engine.base import Context
from app.engine.errors import UnsupportedModel
from app.engine.runtime.keras_archive import UnsafeKerasModel, read_manifest
from tests.support.keras_models import BENIGN, hostile_edits, hostile_files

HOSTILE = [*hostile_edits("x"), "Lambda bytecode (.keras)", "Lambda bytecode (.h5)", "extra zip member",
           "duplicate zip member"]


@pytest.mark.parametrize("name", [f"{m}.{ext}" for m in BENIGN for ext in ("keras", "h5")])
def test_models_keras_saves_pass_the_scan(keras_files, name):
    manifest = read_manifest(keras_files[name])
    assert manifest.kind == name.rsplit(".", 1)[1] and manifest.parameter_count > 0
    assert manifest.classes and "Lambda" not in manifest.classes


@pytest.mark.parametrize("variant", HOSTILE)
def test_hostile_keras_files_are_refused_by_the_scan(keras_files, tmp_path, variant):
    data, word = hostile_files(keras_files["cnn.keras"], keras_files, str(tmp_path / "m"))[variant]
    path = tmp_path / "evil.keras"
    path.write_bytes(data)
    with pytest.raises(UnsafeKerasModel, match=word.replace(".", r"\.")):
        read_manifest(path)


def test_weights_only_h5_is_refused(keras_files, tmp_path):
    import h5py

    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h:
        h.create_dataset("dense/kernel", data=[[1.0, 2.0]])
    with pytest.raises(UnsafeKerasModel, match="weights only"):
        read_manifest(path)


def test_h5_weights_stored_outside_the_file_are_refused(keras_files, tmp_path):
    """An HDF5 external link or external dataset would read another file on the host into the weights."""
    import shutil

    import h5py

    for how in ("link", "external"):
        path = tmp_path / f"{how}.h5"
        shutil.copyfile(keras_files["mlp.h5"], path)
        with h5py.File(path, "a") as h:
            if how == "link":
                h["model_weights/stolen"] = h5py.ExternalLink("/etc/passwd", "/")
            else:
                h.create_dataset("model_weights/stolen", shape=(8,), dtype="u1", external=[("/etc/hostname", 0, 8)])
        with pytest.raises(UnsafeKerasModel, match="stolen"):
            read_manifest(path)


def test_compile_config_is_ignored_but_the_model_is_not(keras_files, tmp_path):
    """compile=False: Keras never reads compile_config, so a custom loss there is no reason to refuse."""
    from tests.support.keras_models import with_config

    def edit(c):
        c["compile_config"] = {"loss": {"module": "my_losses", "class_name": "Custom", "config": {},
                                        "registered_name": "pkg>Custom"}}

    path = tmp_path / "compiled.keras"
    path.write_bytes(with_config(keras_files["mlp.keras"], edit))
    assert read_manifest(path).kind == "keras"
    nested = json.loads(json.dumps({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"compile_config": {"class_name": "Popen", "module": "subprocess"}}}]}}))
    from app.engine.runtime.keras_archive import check_config

    with pytest.raises(UnsafeKerasModel, match="subprocess"):
        check_config(nested)


@pytest.mark.parametrize("variant", ["Lambda bytecode (.keras)", "Lambda bytecode (.h5)", "lambda calling a Keras API",
                                     "TorchModuleWrapper with a pickle", "os.system as activation", "duplicate zip member"])
def test_the_worker_refuses_hostile_keras_before_loading(keras_files, tmp_path, variant):
    """As if the upload check were bypassed: convert.onnx's child scans again and refuses before
    importing Keras (a load failure would read "Keras could not load"), and no payload runs."""
    marker = tmp_path / "payload-ran"
    data, _ = hostile_files(keras_files["cnn.keras"], keras_files, str(marker))[variant]
    model = tmp_path / ("evil.h5" if variant.endswith("(.h5)") else "evil.keras")
    model.write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    ctx = Context(model_path=model, params={}, workdir=work)
    with pytest.raises(UnsupportedModel, match="^refused: ") as err:
        catalog.get("convert.onnx")().run(ctx)
    assert "Keras could not load" not in err.value.detail
    assert not marker.exists() and not keras_files["marker"].exists()
