"""A seccomp filter for plugin processes: no file locks, leases, file-change notifications or keys.

Two plugin processes that run at the same time (a cell's plugin and its auditor, or two
cells side by side) see the same read-only files. Without this filter one could take a
lock (``flock``, ``fcntl`` record locks) or watch a file (inotify, fanotify, dnotify) and
the other could read the signal: a covert channel that lets a plugin learn what its
auditor was asked. Kernel keys are another (their quota is per user id, across namespaces),
and so are shared futexes on those files (keyed by file and offset). Shared futex waits
return at once and shared wakes wake nobody, so no process can sleep on, or learn of, a
futex another one touches; futex2 and io_uring answer ENOSYS.
The filter makes the lock, notification and key calls fail with EPERM; everything else is
allowed. Python, torch and numpy use none of them (process-shared locks, e.g.
multiprocessing's, spin instead of sleeping). Shared state that no filter can hide (free
memory, the run queue, the page cache of the files both read, per-user pipe quotas) stays a
channel: see docs/threat-model.md.

The program is classic BPF, written out here (no libseccomp binding is needed) and handed
to bubblewrap's ``--seccomp FD``; children (the zygote's forked workers) inherit it.
Calls made through another ABI (i386's ``int 0x80``, x32) are refused outright, so the
numbers checked are the only way in.
"""

from __future__ import annotations

import contextlib
import os
import platform
import struct

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARG1_LOW = 0, 4, 24  # args[1]'s low 32 bits (little-endian hosts)
#: BPF opcodes: load word at absolute offset, AND constant, return, jumps on a constant.
_OPCODES = {"ld": 0x20, "and": 0x54, "ret": 0x06, "jeq": 0x15, "jge": 0x35, "jset": 0x45}
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _EAGAIN, _ENOSYS = 1, 11, 38
_X32_BIT = 0x40000000

#: per machine: audit arch, fcntl's number, futex's number, numbers refused outright (flock, inotify_init,
#: inotify_init1, fanotify_init; add_key, request_key, keyctl), and whether x32 calls must be
#: refused. Kernel keys are charged to a quota per user id that every user namespace shares:
#: a plugin that fills it makes a concurrent one's add_key fail with EDQUOT, one bit per call.
_ABIS = {
    "x86_64": (0xC000003E, 72, 202, (73, 253, 294, 300, 248, 249, 250), True),
    "aarch64": (0xC00000B7, 25, 98, (32, 26, 262, 217, 218, 219), False),
}
#: Answered ENOSYS (so libraries fall back), the same numbers on both machines: futex_waitv,
#: futex_wake, futex_wait, futex_requeue (their flags are out of the filter's reach) and
#: io_uring (its futex operations would bypass the filter).
NOT_IMPLEMENTED = (449, 454, 455, 456, 425, 426, 427)
#: futex commands that sleep (WAIT, LOCK_PI, TRYLOCK_PI, WAIT_BITSET, WAIT_REQUEUE_PI,
#: LOCK_PI2): without FUTEX_PRIVATE_FLAG they answer EAGAIN ("the value changed") at once.
FUTEX_SLEEPS = (0, 6, 8, 9, 11, 13)
_FUTEX_PRIVATE_FLAG = 128
#: fcntl commands refused: record locks (F_GETLK, F_SETLK, F_SETLKW and their OFD forms),
#: leases (F_SETLEASE, F_GETLEASE) and dnotify (F_NOTIFY).
FCNTL_REFUSED = (5, 6, 7, 36, 37, 38, 1024, 1025, 1026)


def program() -> bytes | None:
    """The filter as ``struct sock_filter`` array bytes, or None on an unsupported machine."""
    abi = _ABIS.get(platform.machine())
    if abi is None or struct.pack("=I", 1) != struct.pack("<I", 1):
        return None
    arch, fcntl_nr, futex_nr, refused, x32 = abi
    code: list[tuple] = [("ld", _ARCH), ("jeq", arch, None, "deny"), ("ld", _NR)]
    if x32:
        code.append(("jge", _X32_BIT, "deny", None))
    code += [("jeq", nr, "deny", None) for nr in refused]
    code += [("jeq", nr, "enosys", None) for nr in NOT_IMPLEMENTED]
    # A shared futex is keyed by file and offset when the word lies in a mapped file, even
    # a read-only private mapping: two processes that map the same library can wait and
    # wake on it, a clean bit each way. A private futex (what threads use) is keyed by the
    # process. Shared waits return at once and shared wakes wake nobody, so process-shared
    # locks (multiprocessing's) still work, by spinning.
    code += [("jeq", futex_nr, None, "not_futex"), ("ld", _ARG1_LOW)]
    code += [("jset", _FUTEX_PRIVATE_FLAG, "allow", None), ("and", 127)]
    code += [("jeq", cmd, "eagain", None) for cmd in FUTEX_SLEEPS]
    code += [("jeq", 0, "nobody", "nobody"), ("label", "not_futex")]
    code += [("jeq", fcntl_nr, None, "allow"), ("ld", _ARG1_LOW)]
    code += [("jeq", cmd, "deny", None) for cmd in FCNTL_REFUSED]
    code += [("label", "allow"), ("ret", _ALLOW), ("label", "deny"), ("ret", _ERRNO | _EPERM)]
    code += [("label", "enosys"), ("ret", _ERRNO | _ENOSYS)]
    code += [("label", "eagain"), ("ret", _ERRNO | _EAGAIN)]
    code += [("label", "nobody"), ("ret", _ERRNO | 0)]  # "woke 0 waiters"
    return _assemble(code)


def _assemble(code: list[tuple]) -> bytes:
    """Resolve labels (None: the next instruction) into BPF's relative jump offsets."""
    insns, labels = [], {}
    for op in code:
        if op[0] == "label":
            labels[op[1]] = len(insns)
        else:
            insns.append(op)
    out = []
    for i, (op, k, *targets) in enumerate(insns):
        jt, jf = (0 if t is None else labels[t] - i - 1 for t in targets) if targets else (0, 0)
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ValueError("seccomp jump out of range")
        out.append(struct.pack("=HBBI", _OPCODES[op], jt, jf, k))
    return b"".join(out)


@contextlib.contextmanager
def program_fd():
    """A readable descriptor holding :func:`program` (for ``bwrap --seccomp FD``), or None."""
    prog = program()
    if prog is None:
        yield None
        return
    r, w = os.pipe()
    try:
        os.write(w, prog)  # a few hundred bytes: fits in the pipe's buffer
        os.close(w)
        w = -1
        yield r
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
