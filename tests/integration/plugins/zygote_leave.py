"""Imported in a zygote-forked worker by tests/integration/test_zygote_hostile.py: a hostile
plugin that tries to leave a message (a test input it saw) for a later or concurrent worker,
and to outlive its cell. It prints one JSON line of what it managed to do to its log."""

# ruff: noqa: SIM115 - a probe: files opened and left to the process

import ctypes
import fcntl
import json
import mmap
import os
import threading
import time

import numpy

MARK = "dltleak"
libc = ctypes.CDLL(None, use_errno=True)
done = {}

# 1. A name other workers can read in /proc/<pid>/comm (shared /proc of the zygote).
try:
    with open("/proc/self/comm", "w") as f:
        f.write(MARK)
    done["comm"] = True
except OSError as exc:
    done["comm"] = str(exc)

# 2. Outlive the cell: PID 1 of the worker's namespace drops its parent-death signal.
done["pdeathsig_reset"] = libc.prctl(1, 0, 0, 0, 0) == 0

# 3. A key in the inherited session keyring, readable by any process of the same user.
libc.syscall.restype = ctypes.c_long
key = libc.syscall(248, b"user", MARK.encode(), b"secret-test-input", 17, ctypes.c_long(-3))
if key > 0:
    libc.syscall(250, 5, ctypes.c_long(key), ctypes.c_ulong(0x3F3F3F3F))  # KEYCTL_SETPERM
done["key"] = int(key)

# 4. A pseudo-terminal in the zygote's /dev/pts (one devpts instance for all workers).
try:
    master, slave = os.openpty()
    os.write(master, (MARK + "\n").encode())
    done["pty"] = os.ttyname(slave)
except OSError as exc:
    done["pty"] = str(exc)

# 5. A file in its private scratch, reachable as /proc/<pid>/root/... once dumpable.
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
with open(os.path.join(os.getcwd(), MARK + ".txt"), "w") as f:
    f.write("secret-test-input")
done["cwd"] = os.getcwd()
done["pid"] = os.getpid()
done["outer"] = int(os.readlink("/proc/self"))
done["shared_maps"] = [ln.strip() for ln in open("/proc/self/maps") if ln.split()[1][3] == "s"]


def _mount(src: bytes, target: bytes, fstype: bytes, flags: int) -> str:
    r = libc.mount(src, target, fstype, flags, None)
    return "ok" if r == 0 else os.strerror(ctypes.get_errno())


def _inotify() -> int:
    fd = libc.inotify_init1(0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd


# 6. A lock on a file every worker sees (read-only, shared): a bit a concurrent worker can
# test; a record lock and an inotify watch are the same kind of bit.
_held = open(__file__)
for name, take in (("flock", lambda: fcntl.flock(_held, fcntl.LOCK_EX)),
                   ("lockf", lambda: fcntl.lockf(_held, fcntl.LOCK_SH)),
                   ("inotify", lambda: os.close(_inotify()))):  # fmt: skip
    try:
        take()
        done[name] = "ok"
    except OSError as exc:
        done[name] = exc.strerror


# 6b. Kernel keys are charged to a quota per user id that every namespace shares: holding
# keys until add_key fails with EDQUOT is a bit any concurrent worker can test.
k = libc.syscall(248, b"user", b"dltquota", b"x", 1, ctypes.c_long(-2))  # process keyring
done["add_key"] = "ok" if k > 0 else os.strerror(ctypes.get_errno())

# 6c. A shared futex on a word of a file every worker maps is keyed by the file: waking it
# over and over wakes a concurrent worker that waits on the same word (a bit per wake).
_words = mmap.mmap(_held.fileno(), 0, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE)
_addr = ctypes.c_void_p(numpy.frombuffer(_words, dtype=numpy.uint32, count=1).ctypes.data)


def _wake() -> None:
    while True:  # x86-64's futex number; elsewhere it fails, and the test says so
        libc.syscall(202, _addr, 1, 1, None, None, 0)  # FUTEX_WAKE, not private
        time.sleep(0.002)


threading.Thread(target=_wake, daemon=True).start()

# 7. Undo the locked mounts: unmount them, remount the root read-write.
done["umount_shm"] = "ok" if libc.umount2(b"/dev/shm", 2) == 0 else os.strerror(ctypes.get_errno())
done["umount_scratch"] = (
    "ok" if libc.umount2(os.getcwd().encode(), 2) == 0 else os.strerror(ctypes.get_errno())
)
done["remount_root_rw"] = _mount(b"none", b"/", b"", 0x20 | 0x1000)  # MS_REMOUNT|MS_BIND
done["remount_tmp_rw"] = _mount(b"none", b"/tmp", b"", 0x20 | 0x1000)
done["mount_proc"] = _mount(b"proc", b"/proc", b"proc", 0)
print(json.dumps(done), flush=True)


def _stay() -> None:  # keeps the name on a thread too, and burns no CPU
    while True:
        time.sleep(0.2)


threading.Thread(target=_stay, daemon=True).start()
# And do not end when the harness hangs up: the worker's last act is os._exit.
os._exit = lambda code: _stay()
