"""Static safety check of every pickle inside a PyTorch archive, without unpickling anything.

``torch.export.load`` (and ``torch.load`` without ``weights_only``) unpickles with the full
power of pickle: a GLOBAL opcode can name any callable and REDUCE calls it. So before torch
touches an upload, every pickle in it (nested archives included) is read opcode by opcode with
``pickletools.genops`` — which parses, never executes — and every global it references must be
on an allow-list of the names torch's own weights-only unpickler trusts: tensor rebuilders,
storage types, dtypes, plain containers. Anything else is refused, naming the global.

Standard library only: the API runs this without importing torch; the worker runs it again
before loading (defence in depth).
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from dataclasses import dataclass, field

_STORAGES = {f"{kind}Storage" for kind in (
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble", "QInt8", "QUInt8", "QInt32", "Untyped")}
_DTYPES = {"float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long",
           "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
           "qint8", "quint8", "qint32", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"}
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                                   "_rebuild_parameter_with_state", "_rebuild_qtensor",
                                   "_rebuild_sparse_tensor", "_rebuild_device_tensor_from_numpy")}
    | {("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
       ("torch", "Size"), ("torch", "device"), ("torch", "strided"), ("torch", "sparse_coo"),
       ("torch", "per_tensor_affine"), ("torch", "per_channel_affine"), ("torch.storage", "UntypedStorage"),
       ("torch.serialization", "_get_layout"), ("torch.storage", "TypedStorage")}
    | {("torch", s) for s in _STORAGES} | {("torch", d) for d in _DTYPES}
    | {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
       ("builtins", "frozenset"), ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"),
       ("builtins", "slice"), ("builtins", "complex"), ("builtins", "bytearray"), ("_codecs", "encode")}
)
# torch.save keeps tensor bytes as archive/data/<n>, read raw through persistent_load and never
# unpickled; random tensor bytes may well start like a pickle.
STORAGE = re.compile(r"(^|/)data/\d+$")
PROTOCOLS = {bytes([p]) for p in range(2, 6)}
MAX_DEPTH = 3  # archives inside archives inside archives: deeper than torch ever writes


class UnsafeArchive(Exception):
    """The archive holds something that would run code, or can't be checked."""


@dataclass
class ScanResult:
    pickles: list[str] = field(default_factory=list)
    globals: set[tuple[str, str]] = field(default_factory=set)


def scan_pickle(data: bytes, where: str) -> set[tuple[str, str]]:
    """Every (module, name) the pickle would import; raises UnsafeArchive if one isn't allowed."""
    found: set[tuple[str, str]] = set()
    strings: list[str | None] = []  # values pushed recently, enough to resolve STACK_GLOBAL
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add((module, attr))
            elif name == "STACK_GLOBAL":
                if len(strings) < 2 or strings[-1] is None or strings[-2] is None:
                    raise UnsafeArchive(f"{where}: a global whose name can't be determined statically")
                found.add((strings[-2], strings[-1]))
                del strings[-2:]
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                          "BINSTRING", "SHORT_BINSTRING"):
                strings.append(str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = strings[-1] if strings else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                strings.append(memo.get(int(arg)))
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeArchive(f"{where}: pickle extension-registry opcodes are not allowed")
    except UnsafeArchive:
        raise
    except Exception as exc:  # truncated or malformed: can't be checked, so it's refused
        raise UnsafeArchive(f"{where}: not a readable pickle ({exc})") from None
    bad = sorted(found - ALLOWED)
    if bad:
        names = ", ".join(f"{m}.{n}" for m, n in bad[:5])
        raise UnsafeArchive(f"{where} references {names}, which is not on the allow-list of safe "
                            "globals (tensors, storages, dtypes, plain containers); it could run code when loaded")
    return found


def _raw_weights(z: zipfile.ZipFile) -> set[str]:
    """Members torch.export stores as raw tensor bytes (use_pickle false): not pickles."""
    raw: set[str] = set()
    for name in z.namelist():
        if name.endswith(("weights_config.json", "constants_config.json")):
            folder = name.rsplit("/", 1)[0]
            try:
                config = json.loads(z.read(name))["config"]
                raw |= {f"{folder}/{v['path_name']}" for v in config.values() if not v.get("use_pickle", True)}
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return raw


def scan_archive(source, where: str = "archive", depth: int = 0, result: ScanResult | None = None,
                 max_member_bytes: int = 4 << 30) -> ScanResult:
    """Scan a zip (path or file object): every member that is a pickle, every nested zip."""
    result = result or ScanResult()
    if depth > MAX_DEPTH:
        raise UnsafeArchive(f"{where}: archives nested too deeply")
    try:
        with zipfile.ZipFile(source) as z:
            raw = _raw_weights(z)
            for info in z.infolist():
                if info.is_dir():
                    continue
                label = f"{where}/{info.filename}" if depth else info.filename
                with z.open(info) as f:
                    head = f.read(4)
                looks_pickle = info.filename.endswith((".pkl", ".pickle")) or (
                    head[:1] == b"\x80" and head[1:2] in PROTOCOLS and info.filename not in raw
                    and not STORAGE.search(info.filename))
                if head == b"PK\x03\x04":
                    if info.file_size > max_member_bytes:
                        raise UnsafeArchive(f"{label}: nested archive too large to check")
                    scan_archive(io.BytesIO(z.read(info)), label, depth + 1, result)
                elif looks_pickle:
                    if info.file_size > max_member_bytes:
                        raise UnsafeArchive(f"{label}: pickle too large to check")
                    result.globals |= scan_pickle(z.read(info), label)
                    result.pickles.append(label)
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"{where}: not a readable zip archive ({exc})") from None
    return result
