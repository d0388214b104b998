"""Confinement for a child process that handles an uploaded program (defence in depth).

The loaders already refuse anything that could run code; this limits what a bug in them (or in
torch's deserializer, exporter or onnx2torch) could do. Called first thing in the child, which
can't undo it:
- no network: a new, empty network namespace;
- as root: a private mount namespace where every mount is read-only except the one folder the
  child works in, then every capability dropped (so it can't remount or escape), and the
  ``nobody`` user when the Python installation is readable by it (where Python lives under
  ``/root``, as on the CI image, it stays uid 0 without capabilities);
- as another user: a new user namespace holding the network namespace, where the kernel allows.
What was applied is returned, so the job's report says it plainly instead of implying it.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import sys
import tempfile
from pathlib import Path

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _read_only_except(libc, writable: Path) -> bool:
    """Every mount read-only in a private mount namespace, except ``writable``."""
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    box = os.fsencode(writable)
    if libc.mount(box, box, None, MS_BIND | MS_REC, None) != 0:
        return False
    with open("/proc/self/mountinfo", "rb") as f:
        points = [line.split()[4].decode("unicode_escape").encode("latin-1") for line in f]
    ok = True
    for point in points:
        if point != box and not point.startswith(box + b"/"):
            ok &= libc.mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) == 0
    return ok


def _drop_capabilities(libc) -> bool:
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    data = (_CapData * 2)()
    return libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data) == 0


def _readable_by_others(path: str) -> bool:
    """Whether a user other than the owner can reach ``path`` (every parent searchable)."""
    p = Path(path).resolve()
    for part in [p, *p.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & 0o001 or (part == p and not mode & 0o004):
            return False
    return True


def confine(writable: Path) -> dict[str, object]:
    """Isolate the calling process, a child made for this purpose."""
    writable = Path(writable).resolve()
    applied: dict[str, object] = {"network_isolated": False, "read_only_filesystem": False,
                                  "capabilities_dropped": False, "user": pwd.getpwuid(os.geteuid()).pw_name}
    libc = _libc()
    if libc is None or not sys.platform.startswith("linux"):
        return applied
    if os.geteuid() == 0:
        applied["network_isolated"] = libc.unshare(CLONE_NEWNET) == 0
        applied["read_only_filesystem"] = _read_only_except(libc, writable)
        nobody = None
        if all(_readable_by_others(p) for p in {sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)}):
            try:
                nobody = pwd.getpwnam("nobody")
            except KeyError:
                nobody = None
        if nobody is not None:
            for root, dirs, files in os.walk(writable):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, nobody.pw_uid, nobody.pw_gid)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)  # drops every capability with it
            applied.update(user="nobody", capabilities_dropped=True)
        else:
            applied["capabilities_dropped"] = _drop_capabilities(libc)
    else:
        applied["network_isolated"] = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
    # A cwd entered before the bind mount still points at the read-only mount beneath it.
    os.chdir(writable)
    # Libraries that cache to $HOME or $TMPDIR write into the job's folder, nowhere else.
    os.environ.update(HOME=str(writable), TMPDIR=str(writable), XDG_CACHE_HOME=str(writable))

    tempfile.tempdir = None  # recomputed from TMPDIR
    return applied
