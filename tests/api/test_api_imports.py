"""The API process lists techniques and validates params without importing torch or onnxruntime,
and scans Keras uploads without importing Keras (that happens only in convert.onnx's child)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = """
import sys
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
with TestClient(create_app(Settings(data_dir=sys.argv[1]))) as c:
    assert c.get('/openapi.json').status_code == 200
    assert c.get('/healthz').status_code == 200
from app.engine.catalog import all_techniques
for t in all_techniques().values():
    schema = t.Params.model_json_schema()
    if not schema.get("required"):
        t.Params()  # defaults validate too
from pathlib import Path
from app.models.formats import inspect_model
for upload in sys.argv[2:]:  # what POST /v1/models runs on a Keras file
    assert inspect_model(Path(upload))["format"] == "keras"
heavy = sorted(m for m in ('torch', 'onnxruntime', 'keras', 'tensorflow') if m in sys.modules)
print(heavy)
"""


def test_api_never_imports_torch(tmp_path, keras_files):
    uploads = [str(keras_files["cnn.keras"]), str(keras_files["cnn.h5"])]
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *uploads], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
