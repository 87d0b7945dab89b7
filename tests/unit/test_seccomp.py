"""The plugin processes' seccomp filter, loaded into a plain subprocess (no bubblewrap needed):
locks, leases, file-change notifications, kernel keys and sleeping on shared futexes are
refused; ordinary work (multiprocessing included) is not."""

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
# a shared futex on a word of a mapped file is keyed by the file: a wait must not sleep
import mmap, multiprocessing, time
import numpy as np


class Timespec(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]


nr_futex = {"x86_64": 202, "aarch64": 98}[sys.argv[2]]
mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE)
words = np.frombuffer(mapped, dtype=np.uint32, count=len(mapped) // 4)
addr = ctypes.c_void_p(words.ctypes.data)


def futex(op, val, seconds=None):
    ts = ctypes.byref(Timespec(int(seconds), int(seconds % 1 * 1e9))) if seconds else None
    start = time.monotonic()
    r = libc.syscall(ctypes.c_long(nr_futex), addr, op, ctypes.c_uint(val), ts, None, 0)
    took = time.monotonic() - start
    return (r if r >= 0 else errno.errorcode[ctypes.get_errno()]), round(took, 2)


out["futex_shared_wait"] = futex(0, int(words[0]), 1.0)  # FUTEX_WAIT
out["futex_shared_wake"] = futex(1, 1)[0]  # FUTEX_WAKE
out["futex_private_wait"] = futex(128, int(words[0]), 0.05)[0]  # FUTEX_WAIT_PRIVATE
for name, nr in (("futex_waitv", 449), ("io_uring_setup", 425)):
    r = libc.syscall(ctypes.c_long(nr), None, 0, 0, 0, 0)
    out[name] = "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]


def produce(q):
    for i in range(20):
        q.put(i)


mp = multiprocessing.get_context("fork")
q = mp.Queue(maxsize=2)  # the producer blocks on a full queue, the consumer on an empty one
child = mp.Process(target=produce, args=(q,))
child.start()
got = [q.get() for _ in range(20)]
child.join()
out["multiprocessing"] = "ok" if got == list(range(20)) and child.exitcode == 0 else repr(got)
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
    works = ("getfl", "nonblock", "read", "tempfile", "numpy", "multiprocessing")
    assert {k: out[k] for k in works} == dict.fromkeys(works, "ok"), out
    # shared futexes: a wait returns at once ("the value changed"), a wake wakes nobody
    assert out["futex_shared_wait"][0] == "EAGAIN" and out["futex_shared_wait"][1] < 0.5, out
    assert out["futex_shared_wake"] == 0, out
    assert out["futex_private_wait"] == "ETIMEDOUT", out  # threads' futexes reach the kernel
    assert out["futex_waitv"] == out["io_uring_setup"] == "ENOSYS", out


def test_program_is_whole_instructions_with_jumps_in_range():
    prog = seccomp.program()
    if prog is None:
        pytest.skip("no filter for this architecture")
    assert len(prog) % 8 == 0 and 0 < len(prog) // 8 < 64
