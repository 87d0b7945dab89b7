"""Imported in a zygote-forked worker by tests/integration/test_zygote_hostile.py after
zygote_leave.py ran in another worker of the same zygote: it looks for what that one left.
It prints one JSON line of what it found to its log."""

# ruff: noqa: SIM115 - a probe: files opened and left to the process

import ctypes
import errno
import fcntl
import glob
import json
import mmap
import os
import time

import numpy

MARK = "dltleak"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
found = {
    "comm": [],
    "key": [],
    "pty": [],
    "root": [],
    "visible_pids": [],
    "flock": False,
    "flock_refused": False,
}

for path in glob.glob("/proc/[0-9]*/comm") + glob.glob("/proc/[0-9]*/task/*/comm"):
    try:
        if open(path).read().strip() == MARK:
            found["comm"].append(path)
    except OSError:
        pass
found["visible_pids"] = sorted(int(p.split("/")[2]) for p in glob.glob("/proc/[0-9]*"))

key = libc.syscall(250, 10, ctypes.c_long(-3), b"user", MARK.encode(), 0)  # KEYCTL_SEARCH
if key > 0:
    buf = ctypes.create_string_buffer(64)
    n = libc.syscall(250, 11, ctypes.c_long(key), buf, 64)  # KEYCTL_READ
    found["key"].append(buf.raw[: max(n, 0)].decode(errors="replace"))
try:
    for ln in open("/proc/keys"):
        if MARK in ln:
            buf = ctypes.create_string_buffer(64)
            n = libc.syscall(250, 11, ctypes.c_long(int(ln.split()[0], 16)), buf, 64)
            found["key"].append(buf.raw[: max(n, 0)].decode(errors="replace"))
except OSError:
    pass

for pts in glob.glob("/dev/pts/[0-9]*"):
    try:
        fd = os.open(pts, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            data = os.read(fd, 100).decode(errors="replace")
            if MARK in data:
                found["pty"].append(pts)
        except OSError:
            found["pty"].append(f"{pts} opened")
        finally:
            os.close(fd)
    except OSError:
        pass

for root in glob.glob("/proc/[0-9]*/root"):
    try:
        hits = glob.glob(f"{root}/tmp/*/{MARK}.txt") + glob.glob(
            f"{root}/{os.getcwd()}/{MARK}.txt"
        )
        found["root"] += [h for h in hits if open(h).read()]
    except OSError:
        pass
with open(os.path.join(os.path.dirname(__file__), "zygote_leave.py")) as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        found["flock"] = True  # the other worker's lock is there: one bit received
    except PermissionError:
        found["flock_refused"] = True
# The leaving worker wakes a shared futex on the first word of its file, again and again:
# waiting on it here must not sleep (and so cannot be woken).
with open(os.path.join(os.path.dirname(__file__), "zygote_leave.py"), "rb") as f:
    words = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE)
    first = numpy.frombuffer(words, dtype=numpy.uint32, count=1)
    timeout = (ctypes.c_long * 2)(1, 0)  # one second
    start = time.monotonic()
    r = libc.syscall(
        202, ctypes.c_void_p(first.ctypes.data), 0, ctypes.c_uint(int(first[0])), timeout, None, 0
    )  # FUTEX_WAIT, not private
    err = 0 if r == 0 else ctypes.get_errno()
    found["futex_wait"] = [
        "woken" if r == 0 else errno.errorcode.get(err, str(err)),
        round(time.monotonic() - start, 2),
    ]
    del first
print(json.dumps(found), flush=True)
