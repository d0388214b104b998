"""Reading a Keras model (.keras zip or full-model .h5) as data: an allow-list check of its
config before anything hands it to Keras.

Keras' ``safe_mode`` is a block-list: it refuses Lambda bytecode and the bypasses found so far,
but a config may name any class or function under ``keras.*`` and Keras imports and calls it
(a Lambda calling ``keras.datasets.mnist.load_data`` fetched from the network and wrote to
``~/.keras`` under ``safe_mode=True``; six ``safe_mode`` fixes landed in two years). So Lathe
accepts a model only when every object its config names is on the list below: built-in layers,
initializers, regularizers, constraints, dtype policies, the arithmetic ops a functional model
records, and built-in activations; ``module`` within the Keras namespaces they live in;
``registered_name`` null or the class's own name (a registered custom object would take
precedence over the class). ``compile_config`` is ignored: models are loaded with
``compile=False``. The weights file must hold plain numeric arrays and no links or external
storage (an HDF5 external file or virtual dataset would read another file on the host into the
weights). Standard library and h5py only: the API runs this without Keras, torch or onnxruntime,
and the worker runs it again before loading.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
KERAS_MEMBERS = {"config.json", "metadata.json"}
WEIGHT_MEMBERS = {"model.weights.h5", "model.weights.npz"}
MAX_CONFIG_BYTES = 64 << 20
MAX_METADATA_BYTES = 1 << 20
MAX_DEPTH = 100
MAX_OBJECTS = 200_000

_LAYERS = frozenset("""
InputLayer Dense EinsumDense Embedding Activation ReLU LeakyReLU PReLU ELU Softmax Identity
Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose DepthwiseConv1D
DepthwiseConv2D SeparableConv1D SeparableConv2D
MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D
GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalAveragePooling1D
GlobalAveragePooling2D GlobalAveragePooling3D
BatchNormalization LayerNormalization GroupNormalization UnitNormalization RMSNormalization
Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianDropout GaussianNoise
AlphaDropout ActivityRegularization
Flatten Reshape Permute RepeatVector Cropping1D Cropping2D Cropping3D ZeroPadding1D ZeroPadding2D
ZeroPadding3D UpSampling1D UpSampling2D UpSampling3D Rescaling Masking
Add Subtract Multiply Average Maximum Minimum Concatenate Dot
MultiHeadAttention GroupQueryAttention Attention AdditiveAttention
SimpleRNN GRU LSTM SimpleRNNCell GRUCell LSTMCell Bidirectional TimeDistributed
""".split())
_MODELS = frozenset({"Functional", "Sequential"})
_INITIALIZERS = frozenset("""
Zeros Ones Constant RandomNormal RandomUniform TruncatedNormal VarianceScaling GlorotUniform
GlorotNormal HeUniform HeNormal LecunUniform LecunNormal Orthogonal Identity IdentityInitializer
""".split())
_REGULARIZERS = frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"})
_CONSTRAINTS = frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"})
_DTYPE_POLICIES = frozenset({"DTypePolicy", "FloatDTypePolicy"})
# Ops a functional model records when its tensors meet Python operators or keras.ops calls.
_OPS = frozenset("""
Add Subtract Multiply Divide TrueDivide FloorDivide Mod Power Negative Absolute Matmul GetItem
Mean Sum Max Min Reshape Transpose Concatenate ExpandDims Squeeze Sqrt Square Exp Log Tanh
Maximum Minimum Clip Einsum Sigmoid Relu Gelu Softmax
""".split())
ACTIVATIONS = frozenset("""
celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh leaky_relu
linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu swish soft_shrink softmax
softplus softsign sparse_plus sparse_sigmoid sparsemax squareplus tanh tanh_shrink threshold
""".split())
# module → the class names it may supply. ``None``: a legacy (.h5) config, where Keras resolves
# a bare class name among the built-in layers, models and the objects each argument accepts.
_BY_MODULE: dict[str | None, frozenset[str]] = {
    "keras.layers": _LAYERS,
    "keras": _MODELS | _DTYPE_POLICIES,
    "keras.models": _MODELS,
    "keras.src.models.functional": frozenset({"Functional"}),
    "keras.src.models.sequential": frozenset({"Sequential"}),
    "keras.initializers": _INITIALIZERS,
    "keras.regularizers": _REGULARIZERS,
    "keras.constraints": _CONSTRAINTS,
    "keras.dtype_policies": _DTYPE_POLICIES,
    "keras.src.ops.numpy": _OPS,
    "keras.src.ops.nn": _OPS,
    "keras.src.ops.math": _OPS,
    None: _LAYERS | _MODELS | _INITIALIZERS | _REGULARIZERS | _CONSTRAINTS | _DTYPE_POLICIES,
}
_FUNCTION_MODULES = {"keras.activations", "keras.src.activations.activations"}
# Built-in markers for values: tensors flowing between layers, slices and ``...`` in indexing.
_VALUES = {"__keras_tensor__", "__slice__", "__ellipsis__"}


class UnsafeKerasModel(Exception):
    """The file holds something Lathe will not hand to Keras, or is not a Keras model."""


@dataclass(frozen=True)
class KerasManifest:
    kind: str  # "keras" (zip) or "h5"
    config: dict
    layer_count: int
    classes: tuple[str, ...]
    parameter_count: int


def sniff(path: Path | str) -> str | None:
    """"keras" for a zip holding config.json, "h5" for HDF5, else None. Reads the magic bytes
    (and, for a zip, its member names) only."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_MAGIC:
        return "h5"
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                return "keras" if "config.json" in z.namelist() else None
        except zipfile.BadZipFile:
            return None
    return None


def check_config(config: object) -> tuple[int, tuple[str, ...]]:
    """Walk the model config; raise UnsafeKerasModel naming the first object not on the
    allow-list. Returns (objects seen, the class names used)."""
    seen: set[str] = set()
    count = 0

    def walk(node: object, where: str, depth: int) -> None:
        nonlocal count
        if depth > MAX_DEPTH:
            raise UnsafeKerasModel(f"the config is nested more than {MAX_DEPTH} levels deep")
        count += 1
        if count > MAX_OBJECTS:
            raise UnsafeKerasModel(f"the config holds more than {MAX_OBJECTS} values")
        if isinstance(node, list):
            for value in node:
                walk(value, where, depth + 1)
            return
        if not isinstance(node, dict):
            return
        if "class_name" in node:
            where = _check_object(node, where)
            seen.add(node["class_name"])
        for key, value in node.items():
            if depth == 0 and key == "compile_config":
                continue  # loaded with compile=False: Keras never reads it
            walk(value, where, depth + 1)

    walk(config, "the model", 0)
    if not isinstance(config, dict) or config.get("class_name") not in _MODELS:
        raise UnsafeKerasModel("the top-level object is not a Functional or Sequential model "
                               "(subclassed models are Python code; save a functional model)")
    return count, tuple(sorted(seen))


def _check_object(node: dict, where: str) -> str:
    """Check one ``{"class_name": ..., "module": ..., "registered_name": ...}`` reference;
    return a label for messages about what it contains."""
    cls, module = node["class_name"], node.get("module")
    registered = node.get("registered_name")
    inner = node.get("config")
    name = node.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
    label = f"{cls!s:.80}" + (f" ({name!s:.80})" if isinstance(name, str) else "")
    if not isinstance(cls, str) or (module is not None and not isinstance(module, str)):
        raise UnsafeKerasModel(f"in {where}: class_name and module must be strings")
    if cls in _VALUES:
        if module is not None or registered is not None:
            raise UnsafeKerasModel(f"in {where}: the value marker {cls} carries a module or registered_name")
        return where
    if cls == "function":
        fn = node.get("config")
        if module not in _FUNCTION_MODULES or fn not in ACTIVATIONS or registered not in (None, fn):
            raise UnsafeKerasModel(
                f"in {where}: the function {module!s:.80}.{fn!s:.80} is not a built-in Keras "
                "activation (layer functions may only be Keras' own activations)")
        return where
    allowed = _BY_MODULE.get(module)
    if allowed is None:
        raise UnsafeKerasModel(f"in {where}: {label} comes from module {module!s:.80}, which is not a Keras "
                               "module Lathe accepts (built-in layers, initializers, regularizers, "
                               "constraints and dtype policies only)")
    if cls not in allowed:
        raise UnsafeKerasModel(f"in {where}: the class {cls!s:.80} (module {module}) is not on Lathe's list of "
                               "built-in Keras classes (custom layers, Lambda, TorchModuleWrapper, "
                               "TFSMLayer and the like are refused: they run code)")
    if registered is not None and registered != cls:
        raise UnsafeKerasModel(f"in {where}: {label} has registered_name {registered!s:.80}: a registered "
                               "custom object would be loaded instead of the built-in class")
    if not isinstance(node.get("config", {}), (dict, type(None))):
        raise UnsafeKerasModel(f"in {where}: the config of {label} is not an object")
    return label


def _check_weights(h5file) -> int:
    """Plain numeric datasets only: no links, external storage or virtual datasets. Returns the
    number of weight values (optimizer state left out)."""
    import h5py

    total = 0

    def problem(name: str, link) -> str | None:  # raising inside h5py's visit is not safe
        nonlocal total
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            return f"the weights file links {name[:120]} elsewhere (external or soft links are refused)"
        obj = h5file.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual or obj.external:
                return f"the weight {name[:120]} is stored outside the file (external or virtual dataset)"
            if obj.dtype.kind not in "biufc":
                return f"the weight {name[:120]} is not numeric (dtype {obj.dtype})"
            if not name.startswith(("optimizer", "optimizer_weights")):
                total += int(obj.size)
        return None

    found = h5file.visititems_links(problem)
    if found:
        raise UnsafeKerasModel(found)
    return total


def _h5_config(h5file) -> dict:
    raw = h5file.attrs.get("model_config")
    if raw is None:
        raise UnsafeKerasModel(
            "this HDF5 file has no model_config: it holds weights only (save_weights), not a model. "
            "Save the whole model with model.save('model.keras') or model.save('model.h5')")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str) or len(raw) > MAX_CONFIG_BYTES:
        raise UnsafeKerasModel("the HDF5 model_config attribute is not a JSON string of a sensible size")
    try:
        return json.loads(raw)
    except ValueError:
        raise UnsafeKerasModel("the HDF5 model_config attribute is not valid JSON") from None


def _zip_config(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist()]
        names = [i.filename for i in infos]
        if len(names) != len(set(names)):
            dup = next(n for n in names if names.count(n) > 1)
            raise UnsafeKerasModel(f"the archive has two members named {dup[:120]!r}")
        weights = [n for n in names if n in WEIGHT_MEMBERS]
        for n in names:
            if n not in KERAS_MEMBERS | WEIGHT_MEMBERS:
                raise UnsafeKerasModel(f"the archive member {n[:120]!r} is not one Lathe accepts in a .keras "
                                       "file (config.json, metadata.json and model.weights.h5 only; assets "
                                       "and other files are refused)")
        if set(names) & KERAS_MEMBERS != KERAS_MEMBERS or len(weights) > 1:
            raise UnsafeKerasModel("a .keras file holds config.json, metadata.json and one model.weights file")
        unpacked = sum(i.file_size for i in infos)
        if unpacked > 4 * size + (64 << 20):
            raise UnsafeKerasModel(f"the archive unpacks to {unpacked} bytes from {size}: refused as a zip bomb")
        sizes = {i.filename: i.file_size for i in infos}
        if sizes["config.json"] > MAX_CONFIG_BYTES or sizes["metadata.json"] > MAX_METADATA_BYTES:
            raise UnsafeKerasModel("config.json or metadata.json is larger than Lathe accepts")
        try:
            config = json.loads(z.read("config.json"))
            json.loads(z.read("metadata.json"))
        except ValueError:
            raise UnsafeKerasModel("config.json or metadata.json is not valid JSON") from None
        params = 0
        if weights == ["model.weights.h5"]:
            import h5py

            with z.open("model.weights.h5") as member, h5py.File(io.BytesIO(member.read()), "r") as h:
                params = _check_weights(h)
    return config, params


def read_manifest(path: Path | str) -> KerasManifest:
    """Check the whole file; raise UnsafeKerasModel naming the first thing refused."""
    path = Path(path)
    kind = sniff(path)
    try:
        if kind == "keras":
            config, params = _zip_config(path)
        elif kind == "h5":
            import h5py

            with h5py.File(path, "r") as h:
                config = _h5_config(h)
                params = _check_weights(h)
        else:
            raise UnsafeKerasModel("not a .keras archive or an HDF5 file")
    except zipfile.BadZipFile as exc:
        raise UnsafeKerasModel(f"not a readable zip archive ({exc})") from None
    except (OSError, KeyError, RuntimeError) as exc:  # HDF5 or zip members that can't be read
        raise UnsafeKerasModel(f"the file could not be read ({type(exc).__name__}: {str(exc)[:120]})") from None
    _, classes = check_config(config)
    layers = config.get("config", {}).get("layers", []) if isinstance(config.get("config"), dict) else []
    return KerasManifest(kind, config, len(layers), classes, params)
