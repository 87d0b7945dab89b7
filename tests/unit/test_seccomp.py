"""The plugin processes' seccomp filter, loaded into a plain subprocess (no bubblewrap needed):
locks, leases, file-change notifications and kernel keys are refused; ordinary work is not."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from dltbench import seccomp

PROBE = r"""
import ctypes, errno, fcntl, json, os, sys, tempfile
from dltbench import seccomp

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


prog = seccomp.program()
buf = ctypes.create_string_buffer(prog, len(prog))
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER

out = {}
f = open(sys.argv[1], "rb")


def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))


attempt("flock", lambda: fcntl.flock(f, fcntl.LOCK_SH))
attempt("lockf", lambda: fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB))
attempt("ofd_getlk", lambda: fcntl.fcntl(f, 36, bytes(32)))  # F_OFD_GETLK
attempt("notify", lambda: fcntl.fcntl(f, 1026, 1))  # F_NOTIFY (dnotify)
attempt("lease", lambda: fcntl.fcntl(f, 1025))  # F_GETLEASE
fd = libc.inotify_init1(0)
out["inotify"] = "ok" if fd >= 0 else errno.errorcode[ctypes.get_errno()]
# a key in this process's own keyring: keys count against a quota per user id
nr_add_key = {"x86_64": 248, "aarch64": 217}[sys.argv[2]]
key = libc.syscall(ctypes.c_long(nr_add_key), b"user", b"dltbench-probe", b"x", ctypes.c_size_t(1),
                   ctypes.c_long(-2))  # KEY_SPEC_PROCESS_KEYRING
out["add_key"] = "ok" if key >= 0 else errno.errorcode[ctypes.get_errno()]
# what Python and torch do need still works
attempt("getfl", lambda: fcntl.fcntl(f, fcntl.F_GETFL))
attempt("nonblock", lambda: os.set_blocking(f.fileno(), False))
attempt("read", lambda: f.read(10))
attempt("tempfile", lambda: tempfile.TemporaryFile().write(b"x"))
attempt("numpy", lambda: __import__("numpy").ones(3).sum())
if sys.argv[2] == "x86_64":  # getpid through the x32 ABI: another way in, refused
    r = libc.syscall(ctypes.c_long(0x40000000 | 39))
    out["x32"] = "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


@pytest.mark.skipif(seccomp.program() is None, reason="no filter for this architecture")
def test_filter_refuses_locks_and_notifications_only(tmp_path):
    target = tmp_path / "shared.txt"
    target.write_text("a file every plugin process can read\n")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(target), platform.machine()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    refused = ["flock", "lockf", "ofd_getlk", "notify", "lease", "inotify", "add_key"]
    if platform.machine() == "x86_64":
        refused.append("x32")
    assert {k: out[k] for k in refused} == dict.fromkeys(refused, "EPERM"), out
    assert {
        k: out[k] for k in ("getfl", "nonblock", "read", "tempfile", "numpy")
    } == dict.fromkeys(("getfl", "nonblock", "read", "tempfile", "numpy"), "ok"), out


def test_program_is_whole_instructions_with_jumps_in_range():
    prog = seccomp.program()
    if prog is None:
        pytest.skip("no filter for this architecture")
    assert len(prog) % 8 == 0 and 0 < len(prog) // 8 < 64
