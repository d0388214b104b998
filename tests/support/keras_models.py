"""Keras models for the tests, built by Keras itself in a subprocess (``KERAS_BACKEND=torch``;
the test process never imports Keras), and hostile variants made by editing their configs as an
attacker would.

``python -m tests.support.keras_models OUT MARKER`` writes cnn/mlp/block as .keras and .h5, and
a genuine Lambda whose bytecode creates MARKER (Keras itself serialises it).
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ROOT

BENIGN = ("cnn", "mlp", "block")


def build(out: Path, marker: Path) -> dict[str, Path]:
    """Run this module in a subprocess; return {"cnn.keras": path, ...}."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.support.keras_models", str(out), str(marker)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.name: p for p in out.iterdir()}


def _main(out: Path, marker: Path) -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)

    def cnn():
        i = keras.Input((8, 8, 1), name="image")
        x = layers.Conv2D(4, 3, activation="relu")(i)
        x = layers.MaxPooling2D()(x)
        x = layers.BatchNormalization()(x)
        x = layers.Dropout(0.1)(layers.Flatten()(x))
        return keras.Model(i, layers.Dense(10, activation="softmax")(x))

    def mlp():
        return keras.Sequential([keras.Input((16,), name="features"),
                                 layers.Dense(32, activation="gelu", kernel_regularizer="l2"), layers.Dense(4)])

    def block():
        i = keras.Input((6, 16), name="tokens")
        a = layers.MultiHeadAttention(num_heads=2, key_dim=8)(i, i)
        x = layers.LayerNormalization()(layers.Add()([i, a]))
        f = layers.Dense(16)(layers.Dense(32, activation="relu")(x))
        x = layers.LayerNormalization()(layers.Add()([x, f]))
        return keras.Model(i, layers.Dense(3)(layers.GlobalAveragePooling1D()(x)))

    def lambda_bytecode():
        i = keras.Input((4,))
        fn = eval(f"lambda x: (__import__('os').system('touch {marker}'), x)[1]")
        return keras.Model(i, layers.Lambda(fn, output_shape=(4,))(i))

    for name, make in [("cnn", cnn), ("mlp", mlp), ("block", block), ("lambda_bytecode", lambda_bytecode)]:
        model = make()
        model.save(out / f"{name}.keras")
        model.save(out / f"{name}.h5")
    if marker.exists():
        raise SystemExit("building the hostile model ran its payload")


# --- hostile edits (no Keras needed) -----------------------------------------------------------

class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def zipped(items: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in items:
            z.writestr(name, data)
    return buf.getvalue()


def with_config(clean: Path, edit) -> bytes:
    """The clean .keras file with ``edit(config)`` applied to config.json."""
    m = members(clean)
    config = json.loads(m["config.json"])
    edit(config)
    m["config.json"] = json.dumps(config).encode()
    return zipped(list(m.items()))


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _dense(config: dict) -> dict:
    return next(l for l in _layers(config) if l["class_name"] == "Dense")


def _fn(module: str, name: str) -> dict:
    return {"module": module, "class_name": "function", "config": name, "registered_name": name}


def hostile_edits(marker: str) -> dict[str, object]:
    """name → (edit of a clean config, the word the refusal must name) or raw bytes builder."""
    pickled = base64.b64encode(pickle.dumps(Payload(marker), protocol=2)).decode()

    def lambda_api(c):  # keras.datasets.mnist.load_data: "safe" for safe_mode, it downloads
        layer = _dense(c)
        layer.update(class_name="Lambda", module="keras.layers")
        layer["config"] = {"name": layer["config"]["name"], "function": _fn("keras.datasets.mnist", "load_data"),
                           "arguments": {}}

    def os_system(c):
        _dense(c)["config"]["activation"] = _fn("os", "system")

    def builtins_exec(c):
        _dense(c)["config"]["activation"] = _fn("builtins", "exec")

    def get_file(c):
        _dense(c)["config"]["activation"] = _fn("keras.utils", "get_file")

    def torch_wrapper(c):
        layer = _dense(c)
        layer.update(class_name="TorchModuleWrapper", module="keras.layers")
        layer["config"] = {"name": layer["config"]["name"], "module": pickled}

    def foreign_class(c):
        _dense(c)["config"]["kernel_initializer"] = {"module": "keras.initializers", "class_name": "Popen",
                                                      "config": {}, "registered_name": None}

    def foreign_module(c):
        _dense(c)["config"]["kernel_initializer"] = {"module": "subprocess", "class_name": "GlorotUniform",
                                                      "config": {}, "registered_name": None}

    def registered(c):
        _dense(c)["registered_name"] = "evil>Dense"

    def tfsm(c):
        layer = _dense(c)
        layer.update(class_name="TFSMLayer", module="keras.layers")
        layer["config"] = {"name": "t", "filepath": str(marker), "call_endpoint": "serve"}

    return {
        "lambda calling a Keras API": (lambda_api, "Lambda"),
        "os.system as activation": (os_system, "os.system"),
        "builtins.exec as activation": (builtins_exec, "builtins.exec"),
        "get_file as activation": (get_file, "get_file"),
        "TorchModuleWrapper with a pickle": (torch_wrapper, "TorchModuleWrapper"),
        "TFSMLayer": (tfsm, "TFSMLayer"),
        "class outside the allow-list": (foreign_class, "Popen"),
        "module outside keras": (foreign_module, "subprocess"),
        "registered_name mismatch": (registered, "evil>Dense"),
    }


def hostile_files(clean: Path, built: dict[str, Path], marker: str) -> dict[str, tuple[bytes, str]]:
    """name → (file bytes, a word the refusal names)."""
    out = {name: (with_config(clean, edit), word) for name, (edit, word) in hostile_edits(marker).items()}
    out["Lambda bytecode (.keras)"] = (built["lambda_bytecode.keras"].read_bytes(), "Lambda")
    out["Lambda bytecode (.h5)"] = (built["lambda_bytecode.h5"].read_bytes(), "Lambda")
    m = members(clean)
    pkl = pickle.dumps(Payload(marker), protocol=2)
    out["extra zip member"] = (zipped([*m.items(), ("assets/payload.pkl", pkl)]), "assets/payload.pkl")
    evil_config = with_config(clean, hostile_edits(marker)["os.system as activation"][0])
    out["duplicate zip member"] = (zipped([*m.items(), ("config.json", members_of(evil_config)["config.json"])]),
                                   "config.json")
    return out


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]))
