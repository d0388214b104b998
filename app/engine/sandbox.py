"""Confinement for a child process that handles an uploaded program (defence in depth).

The loaders already refuse anything that could run code; this limits what a bug in them (or in
torch's deserializer, exporter or onnx2torch) could do. Called first thing in the child:
- no network: a new, empty network namespace (``unshare(CLONE_NEWNET)``; as a non-root user
  inside a new user namespace, where the kernel allows it);
- an unprivileged user: when the worker runs as root, the child becomes ``nobody`` and can
  write only to the one folder it was given (chowned to it first).
What was applied is returned, so the job's report can say it plainly instead of implying it.
"""

from __future__ import annotations

import ctypes
import os
import pwd
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _unshare(flags: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def confine(writable: Path) -> dict[str, object]:
    """Isolate the calling process (a child made for this purpose: it can't be undone)."""
    applied: dict[str, object] = {"network_isolated": False, "user": None}
    if os.geteuid() == 0:
        applied["network_isolated"] = _unshare(CLONE_NEWNET)
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
            os.setuid(nobody.pw_uid)
            applied["user"] = "nobody"
    else:
        applied["network_isolated"] = _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        applied["user"] = pwd.getpwuid(os.geteuid()).pw_name
    # Libraries that cache to $HOME or $TMPDIR write into the job's folder, nowhere else.
    os.environ.update(HOME=str(writable), TMPDIR=str(writable), XDG_CACHE_HOME=str(writable))
    return applied
