"""Reading a ``torch.export`` (.pt2) archive as data: every member accounted for, nothing unpickled.

``torch.export.load`` is not safe on an uploaded file, for more reasons than pickles:
- weights and constants marked ``use_pickle`` go through ``torch.load(weights_only=False)``
  (whatever their first byte), custom/opaque constants through ``pickle.loads``, and the sample
  inputs through ``torch.load`` with a ``weights_only=False`` fallback;
- the program JSON's symbolic expressions (``expr_str``) are parsed by ``sympy.sympify``,
  which is ``eval``;
- node targets are resolved by ``getattr`` walks from ``torch``, ``math`` or ``operator``
  (``torch.os.system`` resolves), and the graph then calls them;
- ``guards_code`` is Python source compiled into the unlifted module.

So Lathe never calls it. This module (standard library only: the API runs it without torch) is
an allow-list check of the whole archive: the member names, the weights/constants configs
(strict keys, raw tensors only, sizes checked against the bytes), and the program JSON
(operator targets, expressions, no custom objects). The worker runs it again and then builds
the program from the checked parts (``app.engine.pytorch.loading.load_pt2``): tensors from
raw bytes, the program from its JSON with torch's schema deserializer, the sample inputs never
read (example inputs are generated from the program's signature instead).
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# torch._export.serde.schema.ScalarType → (name, bytes per element). Only plain dense dtypes.
DTYPES: dict[int, tuple[str, int]] = {
    1: ("uint8", 1), 2: ("int8", 1), 3: ("int16", 2), 4: ("int32", 4), 5: ("int64", 8),
    6: ("float16", 2), 7: ("float32", 4), 8: ("float64", 8), 10: ("complex64", 8),
    11: ("complex128", 16), 12: ("bool", 1), 13: ("bfloat16", 2),
}
STRIDED = 7  # schema.Layout.Strided
MAX_DIMS = 16
MAX_ENTRIES = 100_000
MAX_JSON_BYTES = 512 << 20
MAX_EXPR_CHARS = 2_000

_ROOT = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_MEMBERS = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d{1,9}"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d{1,9}"
    r"|data/sample_inputs/model\.pt|extra/[A-Za-z0-9_.-]{1,128})$")
_PAYLOAD_KEYS = {"path_name", "is_param", "use_pickle", "tensor_meta"}
_META_KEYS = {"dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout"}

# Node targets the program may call: torch operator overloads in the namespaces torch.export
# writes, and the handful of Python operators it emits for symbolic sizes. A target is looked up
# by attribute walks from ``torch``/``operator``/``math``, so anything else is refused.
_NAME = r"(?!__)[A-Za-z_][A-Za-z0-9_]*"
_DUNDER_OPS = "__and__|__or__|__xor__|__lshift__|__rshift__|__iand__|__ior__|__ixor__|__ilshift__|__irshift__"
_TARGET = re.compile(
    rf"^(torch\.ops\.(aten|prims|higher_order|quantized_decomposed)\.({_NAME}|{_DUNDER_OPS})(\.{_NAME})?"
    r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|eq|ne|lt|le|gt|ge|and_|or_|xor|not_"
    r"|abs|invert|lshift|rshift)"
    r"|math\.(ceil|floor|trunc|sqrt)"
    r"|torch\.(sym_int|sym_float|sym_max|sym_min|sym_not|sym_ite|sym_sqrt|sym_sum|_sym_sqrt))$")
# What ``str(sympy_expr)`` prints for torch's shape expressions: numbers, operators, symbols
# written Symbol('s0', positive=True, integer=True), and the functions below. No attribute
# access, no subscripts, no other strings: what sympify may eval is arithmetic on these names.
_EXPR_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
    "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True",
    "False", "oo", "zoo", "nan", "Piecewise", "ITE",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
    # keyword arguments of Symbol(...)
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero",
    "even", "odd", "rational",
})
_EXPR_TOKEN = re.compile(r"\s+|\d+(\.\d+)?(e[+-]?\d+)?|'[a-z]{1,8}\d{1,9}'|[A-Za-z][A-Za-z0-9_]*|\*\*|[-+*/%(),<>=!&|~]")
_SYMBOL = re.compile(r"^[a-z]{1,8}\d{1,9}$")


class UnsafeArchive(Exception):
    """The archive holds something Lathe will not load, or can't be read as a torch.export program."""


@dataclass(frozen=True)
class Payload:
    """One weight or constant: a view (sizes, strides, offset) on a raw member's bytes."""

    fqn: str
    member: str
    dtype: str
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int
    is_param: bool
    requires_grad: bool

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass
class Manifest:
    """What a checked archive holds; nothing in it has been unpickled or evaluated."""

    root: str
    program: dict
    weights: list[Payload] = field(default_factory=list)
    constants: list[Payload] = field(default_factory=list)

    @property
    def parameter_count(self) -> int:
        """Distinct parameters: tied weights (two names, one view of one file) count once."""
        views = {(p.member, p.sizes, p.strides, p.storage_offset): p.numel for p in self.weights if p.is_param}
        return sum(views.values())


def _int(value: object, what: str) -> int:
    if not isinstance(value, dict) or set(value) != {"as_int"} or type(value["as_int"]) is not int:
        raise UnsafeArchive(f"{what}: expected {{'as_int': n}}, found {str(value)[:80]}")
    if value["as_int"] < 0:
        raise UnsafeArchive(f"{what}: negative value {value['as_int']}")
    return value["as_int"]


def _payloads(z: zipfile.ZipFile, root: str, kind: str, sizes: dict[str, int]) -> list[Payload]:
    folder = f"{root}/data/{kind}"
    config_name = f"{folder}/model_{kind}_config.json"
    prefix = "weight_" if kind == "weights" else "tensor_"
    if config_name not in sizes:
        if kind == "constants":
            return []
        raise UnsafeArchive(f"{config_name} is missing")
    try:
        config = json.loads(z.read(config_name))
    except ValueError:
        raise UnsafeArchive(f"{config_name} is not valid JSON") from None
    if not isinstance(config, dict) or set(config) != {"config"} or not isinstance(config["config"], dict):
        raise UnsafeArchive(f"{config_name}: expected {{'config': {{...}}}}")
    entries = config["config"]
    if len(entries) > MAX_ENTRIES:
        raise UnsafeArchive(f"{config_name}: {len(entries)} entries, more than {MAX_ENTRIES}")
    out: list[Payload] = []
    file_dtype: dict[str, str] = {}
    for fqn, entry in entries.items():
        where = f"{config_name} [{fqn[:80]!r}]"
        if not isinstance(entry, dict) or set(entry) != _PAYLOAD_KEYS:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise UnsafeArchive(f"{where}: expected exactly the keys {sorted(_PAYLOAD_KEYS)}, found {keys}")
        if entry["use_pickle"] is not False:
            raise UnsafeArchive(f"{where} is stored as a pickle (use_pickle); Lathe reads raw tensors only. "
                                "Plain dense tensors are saved raw by torch.export.save")
        path_name = entry["path_name"]
        if not isinstance(path_name, str) or not re.fullmatch(rf"{prefix}\d{{1,9}}", path_name):
            raise UnsafeArchive(f"{where}: path_name {str(path_name)[:80]!r} is not a {prefix}<n> file "
                                "(custom or opaque objects are not accepted)")
        member = f"{folder}/{path_name}"
        if member not in sizes:
            raise UnsafeArchive(f"{where}: {member} is missing")
        meta = entry["tensor_meta"]
        if not isinstance(meta, dict) or set(meta) != _META_KEYS:
            raise UnsafeArchive(f"{where}: tensor_meta must have exactly the keys {sorted(_META_KEYS)}")
        if type(meta["dtype"]) is not int or meta["dtype"] not in DTYPES:
            raise UnsafeArchive(f"{where}: unsupported dtype code {meta['dtype']!r}")
        if meta["layout"] != STRIDED:
            raise UnsafeArchive(f"{where}: only dense (strided) tensors are accepted")
        if not isinstance(meta["device"], dict) or meta["device"].get("type") not in ("cpu", "cuda") \
                or set(meta["device"]) - {"type", "index"}:
            raise UnsafeArchive(f"{where}: unsupported device {str(meta['device'])[:80]}")
        if not isinstance(meta["requires_grad"], bool) or not isinstance(entry["is_param"], bool):
            raise UnsafeArchive(f"{where}: requires_grad and is_param must be booleans")
        dims, strides = meta["sizes"], meta["strides"]
        if not isinstance(dims, list) or not isinstance(strides, list) or len(dims) != len(strides) \
                or len(dims) > MAX_DIMS:
            raise UnsafeArchive(f"{where}: sizes and strides must be lists of the same length (at most {MAX_DIMS})")
        sizes_t = tuple(_int(d, f"{where} size") for d in dims)
        strides_t = tuple(_int(s, f"{where} stride") for s in strides)
        offset = _int(meta["storage_offset"], f"{where} storage_offset")
        dtype, itemsize = DTYPES[meta["dtype"]]
        if file_dtype.setdefault(member, dtype) != dtype:
            raise UnsafeArchive(f"{where}: {member} is shared with a different dtype")
        nbytes = sizes[member]
        if nbytes % itemsize:
            raise UnsafeArchive(f"{where}: {member} holds {nbytes} bytes, not a whole number of {dtype}")
        # Python ints: exact, no wrap-around. The view must lie inside the member's bytes.
        if math.prod(sizes_t):
            extent = offset + sum((n - 1) * s for n, s in zip(sizes_t, strides_t)) + 1
            if extent * itemsize > nbytes:
                raise UnsafeArchive(f"{where}: the tensor {list(sizes_t)} needs {extent * itemsize} bytes, "
                                    f"{member} holds {nbytes}")
        out.append(Payload(fqn, member, dtype, sizes_t, strides_t, offset, entry["is_param"], meta["requires_grad"]))
    stray = {m for m in sizes if m.startswith(f"{folder}/{prefix}")} - {p.member for p in out}
    if stray:
        raise UnsafeArchive(f"{sorted(stray)[0]} is not referenced by {config_name}")
    return out


def check_expr(expr: object) -> None:
    """Refuse a symbolic expression unless every token is on the arithmetic allow-list."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise UnsafeArchive("a symbolic expression is not a string or is too long")
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            raise UnsafeArchive(f"the symbolic expression {expr[:80]!r} has a character Lathe does not "
                                f"accept ({expr[pos]!r})")
        token = m.group(0)
        if token[0].isalpha() and token not in _EXPR_NAMES and not _SYMBOL.match(token):
            raise UnsafeArchive(f"the symbolic expression {expr[:80]!r} uses {token[:40]!r}, which is not an "
                                "arithmetic function torch writes")
        if token[0].isdigit() and len(token) > 20:
            raise UnsafeArchive(f"the symbolic expression {expr[:80]!r} has an oversized number")
        pos = m.end()
    if expr.count("**") > 1:
        raise UnsafeArchive(f"the symbolic expression {expr[:80]!r} nests powers")


def check_target(target: object) -> None:
    if not isinstance(target, str) or not _TARGET.match(target):
        raise UnsafeArchive(f"the program calls {str(target)[:120]!r}, which is not a torch operator "
                            "Lathe accepts (aten/prims/higher_order operators and Python arithmetic only)")


def _check_program(node: object, depth: int = 0) -> None:
    """Walk the program JSON: every target, operator argument and expression is checked."""
    if depth > 200:
        raise UnsafeArchive("the program JSON is nested too deeply")
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "target" and isinstance(value, str) and "inputs" in node:
                check_target(value)
            elif key == "as_operator":
                check_target(value)
            elif key == "expr_str":
                check_expr(value)
            elif key in ("as_custom_obj", "as_custom_objs", "custom_obj") and value:
                raise UnsafeArchive("the program uses custom (torchbind/opaque) objects, which Lathe does not load")
            elif key == "custom_obj_values" and value:
                raise UnsafeArchive("the program uses custom (torchbind/opaque) objects, which Lathe does not load")
            _check_program(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _check_program(value, depth + 1)


def _program(z: zipfile.ZipFile, root: str, sizes: dict[str, int]) -> dict:
    name = f"{root}/models/model.json"
    if name not in sizes:
        raise UnsafeArchive(f"{name} is missing: not a torch.export.save archive of one program")
    if sizes[name] > MAX_JSON_BYTES:
        raise UnsafeArchive(f"{name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        program = json.loads(z.read(name))
    except ValueError:
        raise UnsafeArchive(f"{name} is not valid JSON") from None
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise UnsafeArchive(f"{name} is not a serialized ExportedProgram")
    for key in program.get("range_constraints") or {}:
        if not _SYMBOL.match(str(key)):
            raise UnsafeArchive(f"range constraint {str(key)[:40]!r} is not a symbol name")
    _check_program(program)
    # Guards are Python source that torch compiles into the unlifted module: never run them.
    # They only re-check input shapes, which Lathe's own generated inputs satisfy by construction.
    program["guards_code"] = []
    return program


def read_manifest(path: Path | str) -> Manifest:
    """Check the whole archive; raise UnsafeArchive naming the first thing refused."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            names = [i.filename for i in infos]
            if len(names) != len(set(names)):
                raise UnsafeArchive("the archive has two members with the same name")
            roots = {n.split("/", 1)[0] for n in names}
            if len(roots) != 1 or not all("/" in n for n in names):
                raise UnsafeArchive("a torch.export archive has exactly one top folder")
            root = roots.pop()
            if not _ROOT.match(root):
                raise UnsafeArchive(f"unexpected top folder name {root[:80]!r}")
            for n in names:
                if not _MEMBERS.match(n[len(root) + 1:]):
                    raise UnsafeArchive(f"{n[:200]} is not a member Lathe accepts in a torch.export archive "
                                        "(weights, constants and the program only; no pickles, compiled "
                                        "kernels or custom objects)")
            sizes = {i.filename: i.file_size for i in infos}
            # torch writes archives uncompressed: a large ratio is a zip bomb, not a model.
            unpacked, packed = sum(sizes.values()), Path(path).stat().st_size
            if unpacked > 2 * packed + (64 << 20):
                raise UnsafeArchive(f"the archive unpacks to {unpacked} bytes from {packed}: refused as a zip bomb")
            fmt = z.read(f"{root}/archive_format") if f"{root}/archive_format" in sizes else b""
            if fmt.strip() != b"pt2":
                raise UnsafeArchive("archive_format is not 'pt2': not a torch.export.save archive")
            manifest = Manifest(root, _program(z, root, sizes))
            manifest.weights = _payloads(z, root, "weights", sizes)
            manifest.constants = _payloads(z, root, "constants", sizes)
            return manifest
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"not a readable zip archive ({exc})") from None
    except (KeyError, RuntimeError, OSError) as exc:  # a member that can't be read back
        raise UnsafeArchive(f"the archive could not be read ({type(exc).__name__})") from None
