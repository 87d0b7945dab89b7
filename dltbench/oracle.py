"""The narrow interface between the harness and plugin code in another process.

Two processes talk over one socket: the *harness* (a cell's evaluator, which holds the
test split, the ground truth, the evaluation's random streams and the cost ledger) and
the *plugin worker* (:mod:`dltbench.worker`, which holds the method and its artifact).
Either side may ask the other to call a method on an object it holds (an *oracle*):

* the harness queries an artifact that stays in the worker (a model's logits, input
  gradients through :class:`RemoteModule`'s autograd, a VAE's ``encode``), and
* the plugin queries what the harness exposes to it (a sampler's counted target, the
  model an attack attacks), and only the methods the harness allow-listed.

Messages *to* the worker are pickled (the worker trusts the harness). Messages *from* the
worker are decoded by :func:`decode`, which rebuilds only plain data: numbers, strings,
lists, dicts, tensors and arrays of a few dtypes, and a fixed list of
``torch.distributions`` from their parameters. No plugin class, and no pickle, ever
crosses into the harness, so nothing the plugin sends can run code there.

The harness verifies every answer it gets (type, shape, finiteness) through the
``check`` of the proxy, not only a probe batch.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .api import InvalidArtifact

#: dtypes a tensor from the plugin may have (numpy names; bool included).
_DTYPES = {
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "bool": np.bool_,
}  # fmt: skip

#: Distributions the harness rebuilds from their parameters (name -> constructor args).
_DISTRIBUTIONS: dict[str, tuple[type, tuple[str, ...]]] = {
    "Normal": (torch.distributions.Normal, ("loc", "scale")),
    "Bernoulli": (torch.distributions.Bernoulli, ("logits",)),
    "Categorical": (torch.distributions.Categorical, ("logits",)),
    "Laplace": (torch.distributions.Laplace, ("loc", "scale")),
    "LowRankMultivariateNormal": (
        torch.distributions.LowRankMultivariateNormal,
        ("loc", "cov_factor", "cov_diag"),
    ),
    "MultivariateNormal": (torch.distributions.MultivariateNormal, ("loc", "scale_tril")),
}


def register_distribution(cls: type, params: tuple[str, ...]) -> None:
    """Let a dltbench-defined distribution class cross the boundary, rebuilt from ``params``."""
    _DISTRIBUTIONS[cls.__name__] = (cls, params)


#: Largest message the harness accepts from a plugin (bytes): bounds its memory use.
MAX_MESSAGE = 2**31
#: Largest JSON header of a message (bytes): a small header of empty lists must not
#: expand into gigabytes of Python objects in the harness.
MAX_HEADER = 2**20


class ProtocolError(InvalidArtifact):
    """The plugin process sent something the protocol does not allow."""


class PluginError(Exception):
    """Plugin code raised; the message carries the plugin's traceback text."""


class PluginDied(Exception):
    """The plugin process ended (crash, memory limit, killed) while the harness waited."""


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True, eq=False)
class Ref:
    """A handle on an object held by the other process (an oracle)."""

    oid: int
    kind: str = "module"  # "module": callable with autograd; "object": methods only
    attributes: dict = field(default_factory=dict)  # plain values the holder publishes


@dataclass
class Exposed:
    """An object the harness lets the plugin call, with the allow-listed method names.

    ``"__call__"`` allows calling it like a module (with input gradients when
    ``grad`` is true).
    """

    obj: Any
    methods: frozenset[str]
    grad: bool = False
    kind: str = "module"
    #: Plain values handed over with the handle (e.g. a target's dim and device).
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodGenerator:
    """Stands for a torch.Generator of the plugin's own (method) stream, made in the worker."""


# --------------------------------------------------------------------------- codec


#: torch dtype -> the numpy name a tensor of it is sent as.
_TORCH_NAMES = {getattr(torch, n): n for n in _DTYPES}
_NP_DTYPES = {n: np.dtype(t) for n, t in _DTYPES.items()}
# One encoder, made once: json.dumps with non-default arguments builds a new one per call,
# and the sampler's oracle sends tens of thousands of small messages per cell.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, check_circular=False)


def _no_constant(name: str) -> None:
    raise ProtocolError(f"{name} is not JSON")


# Made once too (json.loads with any argument makes a decoder per call).
_JSON_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _enc(o: Any, buffers: list) -> Any:
    if isinstance(o, torch.Tensor):
        t = o.detach()
        t = t.float() if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
        name = _TORCH_NAMES.get(t.dtype)
        if name is None:
            raise TypeError(f"tensor dtype {t.dtype} cannot cross the plugin boundary")
        a = t.cpu().contiguous().numpy()
        buffers.append(memoryview(a).cast("B") if a.size else b"")
        return {"__t__": len(buffers) - 1, "dtype": name, "shape": list(a.shape)}
    if isinstance(o, (bool, str)) or o is None:
        return o
    if isinstance(o, list):
        return [_enc(v, buffers) for v in o]
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else {"__f__": repr(f)}
    if isinstance(o, tuple):
        return {"__tuple__": [_enc(v, buffers) for v in o]}
    if isinstance(o, dict):
        if not all(isinstance(k, str) for k in o):
            raise TypeError("only dicts with string keys cross the plugin boundary")
        if any(k.startswith("__") for k in o):
            raise TypeError("dict keys starting with '__' are reserved by the protocol")
        return {k: _enc(v, buffers) for k, v in o.items()}
    if isinstance(o, np.ndarray):
        a = np.asarray(o, order="C")  # not ascontiguousarray: it turns a 0-d array into 1-d
        if a.dtype.name not in _DTYPES:
            raise TypeError(f"array dtype {a.dtype} cannot cross the plugin boundary")
        buffers.append(a.tobytes())
        return {"__a__": len(buffers) - 1, "dtype": a.dtype.name, "shape": list(a.shape)}
    if isinstance(o, torch.distributions.Independent):
        return {"__dist__": "Independent", "base": _enc(o.base_dist, buffers),
                "ndims": int(o.reinterpreted_batch_ndims)}  # fmt: skip
    if isinstance(o, torch.distributions.Distribution):
        name = type(o).__name__
        if name not in _DISTRIBUTIONS or type(o) is not _DISTRIBUTIONS[name][0]:
            raise TypeError(
                f"distribution {name} cannot cross the plugin boundary; use one of "
                f"{', '.join(sorted(_DISTRIBUTIONS))} (optionally in Independent)"
            )
        return {"__dist__": name,
                "params": {p: _enc(getattr(o, p), buffers) for p in _DISTRIBUTIONS[name][1]}}  # fmt: skip
    if isinstance(o, Ref):
        return {"__ref__": o.oid, "kind": o.kind, "attributes": _enc(o.attributes, buffers)}
    raise TypeError(f"a {type(o).__name__} cannot cross the plugin boundary")


def encode(obj: Any, tag: bytes = b"") -> bytes:
    """Plain data (and tensors) as one frame: 4-byte header length, JSON header, raw buffers,
    after ``tag`` (the transport's frame tag, joined here: one copy of a large tensor, not two)."""
    buffers: list = []
    v = _enc(obj, buffers)
    header = _JSON.encode({"v": v, "sizes": [len(b) for b in buffers]}).encode()
    return b"".join([tag, struct.pack("<I", len(header)), header, *buffers])


def decode(frame: bytes | memoryview, refs: bool = False) -> Any:
    """Rebuild what :func:`encode` wrote, accepting nothing else (raises ProtocolError).

    ``refs``: accept handles (only the worker does: the harness hands it handles, never
    the reverse). What a frame decodes to takes about as much memory as the frame: each
    buffer is read at most once, and distributions' parameters must not broadcast.
    """
    try:
        (hlen,) = struct.unpack_from("<I", frame, 0)
        if hlen > MAX_HEADER:
            raise ProtocolError(f"message header of {hlen} bytes (at most {MAX_HEADER})")
        # NaN and Infinity are not JSON: encode writes them as markers, never bare.
        header = _JSON_DECODER.decode(bytes(frame[4 : 4 + hlen]).decode())
        if not isinstance(header, dict) or "v" not in header:
            raise ProtocolError("message header without a value")
        sizes = header["sizes"]
        if not isinstance(sizes, list) or not all(type(s) is int and s >= 0 for s in sizes):
            raise ProtocolError("bad buffer sizes")
        bounds = list(itertools.accumulate(sizes, initial=4 + hlen))
        if bounds[-1] != len(frame):
            raise ProtocolError("frame length does not match its header")
        starts = bounds[:-1]
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"unreadable message from the plugin process: {exc}") from exc
    used: set[int] = set()

    def array(d: dict, key: str) -> np.ndarray:
        i, dtype, shape = d[key], d.get("dtype"), d.get("shape")
        # type() is not isinstance(): True is not buffer 1, nor a dimension of 1.
        if type(i) is not int or not 0 <= i < len(sizes) or not isinstance(dtype, str):
            raise ProtocolError(f"bad array descriptor {d!r}"[:200])
        if dtype not in _DTYPES:
            raise ProtocolError(f"bad array dtype {dtype!r}"[:200])
        if i in used:  # one small buffer named many times would be copied many times
            raise ProtocolError(f"buffer {i} is used twice")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise ProtocolError(f"bad array shape {shape!r}"[:200])
        used.add(i)
        np_dtype, n = _NP_DTYPES[dtype], math.prod(shape)
        if n * np_dtype.itemsize != sizes[i]:
            raise ProtocolError("array size does not match its shape")
        return np.frombuffer(frame, np_dtype, n, starts[i]).reshape(shape).copy()

    def dec(o: Any, depth: int = 0) -> Any:
        if depth > 64:
            raise ProtocolError("message nested too deeply")
        if isinstance(o, list):
            return [dec(v, depth + 1) for v in o]
        if not isinstance(o, dict):
            if isinstance(o, (str, int, float, bool)) or o is None:
                return o
            raise ProtocolError(f"unexpected {type(o).__name__} in a message")
        if "__t__" in o:
            return torch.from_numpy(array(o, "__t__"))
        if "__a__" in o:
            return array(o, "__a__")
        if "__f__" in o:
            if not isinstance(o["__f__"], str) or o["__f__"] not in ("nan", "inf", "-inf"):
                raise ProtocolError("bad float")
            return float(o["__f__"])
        if "__tuple__" in o:
            if not isinstance(o["__tuple__"], list):
                raise ProtocolError("a tuple must be sent as a list")
            return tuple(dec(v, depth + 1) for v in o["__tuple__"])
        if "__ref__" in o:
            if not refs:
                raise ProtocolError("a plugin cannot hand the harness a reference")
            attrs = dec(o.get("attributes", {}), depth + 1)
            return Ref(int(o["__ref__"]), str(o.get("kind", "module")), attrs or {})
        if "__dist__" in o:
            return _rebuild_distribution(o, dec, depth)
        if any(k.startswith("__") for k in o):
            raise ProtocolError(f"unknown marker in {sorted(o)}"[:200])
        return {k: dec(v, depth + 1) for k, v in o.items()}

    try:
        return dec(header["v"])
    except ProtocolError:
        raise
    except Exception as exc:  # numpy's and torch's own refusals (65 dimensions, ...)
        raise ProtocolError(f"unreadable message from the plugin process: {exc}"[:300]) from exc


def _rebuild_distribution(o: dict, dec: Callable, depth: int) -> torch.distributions.Distribution:
    name = o["__dist__"]
    try:
        if name == "Independent":
            base = dec(o["base"], depth + 1)
            if not isinstance(base, torch.distributions.Distribution):
                raise ProtocolError("Independent needs a distribution")
            return torch.distributions.Independent(base, int(o["ndims"]))
        cls, names = _DISTRIBUTIONS[name]
        params = {p: dec(o["params"][p], depth + 1) for p in names}
        if not all(isinstance(v, torch.Tensor) for v in params.values()):
            raise ProtocolError(f"{name} parameters must be tensors")
        _check_parameter_shapes(name, params)
        if cls.__module__.startswith("torch."):
            return cls(**params, validate_args=False)
        return cls(**params)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"cannot rebuild distribution {name!r}: {exc}") from exc


#: Trailing dimensions of a parameter that are not batch dimensions (0 when not listed).
_EVENT_DIMS = {
    "MultivariateNormal": {"loc": 1, "scale_tril": 2},
    "LowRankMultivariateNormal": {"loc": 1, "cov_factor": 2, "cov_diag": 1},
}


def _check_parameter_shapes(name: str, params: dict[str, torch.Tensor]) -> None:
    """Refuse parameters that would cost the harness far more than the frame that carried them.

    :func:`encode` sends every parameter at the distribution's full batch shape, so honest
    parameters never broadcast; forged ones could (a loc of N x 1 and a scale of 1 x N are
    N^2 numbers as soon as the harness asks for a variance or a log-probability), and a
    low-rank normal's constructor builds and factors a rank x rank matrix (a rank of
    40000 in a 160 kB frame: 6.4 GB and minutes of Cholesky).
    """
    event = _EVENT_DIMS.get(name, {})
    batch = set()
    for p, t in params.items():
        e = event.get(p, 0)
        if t.dim() < e:
            raise ProtocolError(f"{name}'s {p} needs at least {e} dimensions")
        batch.add(tuple(t.shape[: t.dim() - e]))
    if len(batch) > 1:
        raise ProtocolError(f"{name}'s parameters have different batch shapes (no broadcasting)")
    if name == "MultivariateNormal":
        n = params["loc"].shape[-1]
        if tuple(params["scale_tril"].shape[-2:]) != (n, n):
            raise ProtocolError("MultivariateNormal's scale_tril must be n x n for a loc of n")
    if name == "LowRankMultivariateNormal":
        n, rank = params["cov_factor"].shape[-2:]
        if params["loc"].shape[-1] != n or params["cov_diag"].shape[-1] != n or rank > n:
            raise ProtocolError(
                "LowRankMultivariateNormal needs loc and cov_diag of n and cov_factor of "
                "n x rank with rank <= n"
            )


class _CompactPickler(pickle.Pickler):
    """Pickles a tensor that views part of a larger storage as a copy of that part only.

    A pickled tensor carries its whole storage: a training split sliced from an array that
    also holds the test split, or a query sliced from the test set, would send all of it.
    The codec sends only a view's own bytes; this keeps the pickle path (training views,
    requests with a generator) to the same rule.
    """

    def reducer_override(self, obj: Any) -> Any:
        if (
            isinstance(obj, torch.Tensor)
            and obj.layout == torch.strided
            and not obj.is_meta
            and obj.untyped_storage().nbytes() > obj.numel() * obj.element_size()
        ):
            own = obj.detach().clone()
            if isinstance(obj, torch.nn.Parameter):
                own = torch.nn.Parameter(own, requires_grad=obj.requires_grad)
            elif type(obj) is not torch.Tensor:
                own = own.as_subclass(type(obj))
            if obj.requires_grad and not own.requires_grad:
                own.requires_grad_(True)
            return own.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return NotImplemented


# --------------------------------------------------------------------------- endpoint


@dataclass
class Endpoint:
    """One side of the connection: sends requests, and serves the other side's meanwhile.

    ``trusted_peer``: messages from the peer are unpickled (the worker's view of the
    harness); otherwise they go through :func:`decode` (the harness's view of a plugin).
    ``objects`` are what this side lets the peer call: on the harness, :class:`Exposed`
    entries with allow-lists; on the worker, any object (the harness is trusted).
    """

    conn: Any
    trusted_peer: bool
    objects: dict[int, Any] = field(default_factory=dict)
    on_progress: Callable[[str, int, int], None] | None = None
    #: Called on the harness for each request the plugin makes (counting, limits).
    _next_oid: itertools.count = field(default_factory=lambda: itertools.count(1))
    _graphs: OrderedDict = field(default_factory=OrderedDict)
    _next_graph: itertools.count = field(default_factory=lambda: itertools.count(1))
    make_generator: Callable[[], torch.Generator] | None = None

    # -- sending ------------------------------------------------------------------------
    def _send(self, msg: tuple) -> None:
        # Frames start with a tag: b"E" for the plain-data codec, b"P" for a pickle. The
        # codec is ~4x faster than pickling tensors; only the harness may send pickles
        # (configs, dataclasses of the training view), and only the worker accepts them.
        if self.trusted_peer:  # worker -> harness: plain data only
            self.conn.send_bytes(encode(list(msg), b"E"))
            return
        try:
            frame = encode(list(msg), b"E")
        except TypeError:
            buf = io.BytesIO()
            _CompactPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(msg)
            frame = b"P" + buf.getvalue()
        self.conn.send_bytes(frame)

    def _recv(self) -> tuple:
        try:
            frame = self.conn.recv_bytes(MAX_MESSAGE)
        except (EOFError, OSError) as exc:
            raise PluginDied("the other process closed the connection") from exc
        tag, body = frame[:1], memoryview(frame)[1:]
        if self.trusted_peer:
            return tuple(pickle.loads(body) if tag == b"P" else decode(body, refs=True))
        if tag != b"E":
            raise ProtocolError("a message from the plugin must use the plain-data codec")
        msg = decode(body)
        if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[0], str):
            # every kind (rep, err, req, progress) has a body: ["rep"] alone would be an
            # IndexError in the harness, not a ProtocolError
            raise ProtocolError(
                "a message from the plugin must be a list: its kind, then its body"
            )
        return tuple(msg)

    def expose(self, obj: Any) -> Ref:
        """Register ``obj`` for the peer to call; returns the handle to send."""
        oid = next(self._next_oid)
        self.objects[oid] = obj
        if isinstance(obj, Exposed):  # the peer's proxy knows which methods it may call
            return Ref(oid, obj.kind, {**obj.attributes, "methods": sorted(obj.methods)})
        return Ref(oid, "module")

    def request(self, op: str, *args: Any) -> Any:
        """Send one request and serve the peer's requests until its reply comes.

        On the harness, :class:`Exposed` objects anywhere in ``args`` are registered and
        sent as handles: the object itself never leaves the harness.
        """
        if not self.trusted_peer:
            args = tuple(self._handles(a) for a in args)
        self._send(("req", op, *args))
        while True:
            msg = self._recv()
            kind = msg[0]
            if kind == "rep":
                return msg[1]
            if kind == "err":
                raise PluginError(
                    _printable(str(msg[1])) if not self.trusted_peer else str(msg[1])
                )
            if kind == "req":
                self._serve_one(msg[1], msg[2:])
            elif kind == "progress" and not self.trusted_peer:
                self._progress(msg[1:])
            else:
                raise ProtocolError(f"unexpected message kind {kind!r}")

    def _handles(self, v: Any) -> Any:
        return map_leaves(v, lambda x: self.expose(x) if isinstance(x, Exposed) else x)

    def progress(self, desc: str, done: int, total: int) -> None:
        """Worker side: tell the harness how far a long step is."""
        self._send(("progress", str(desc), int(done), int(total)))

    def _progress(self, args: tuple) -> None:
        well_formed = (
            len(args) == 3
            and isinstance(args[0], str)
            and all(type(a) is int and 0 <= a < 2**53 for a in args[1:])
        )  # a progress bar turns them into floats: 10**400 would overflow in the harness
        if well_formed and self.on_progress:
            self.on_progress(_printable(args[0][:80], keep=""), args[1], args[2])

    # -- serving ------------------------------------------------------------------------
    def serve_forever(self, handlers: dict[str, Callable[..., Any]]) -> None:
        """Worker main loop: answer requests until the harness says ``close``."""
        self._handlers = handlers
        while True:
            msg = self._recv()
            if msg[0] != "req":
                continue
            if msg[1] == "close":
                self._send(("rep", None))
                return
            self._serve_one(msg[1], msg[2:])

    def _serve_one(self, op: str, args: tuple) -> None:
        try:
            if op == "call":
                result = self._call(*args)
            elif op == "vjp":
                result = self._vjp(*args)
            elif op == "getattr" and self.trusted_peer:
                result = self._getattr(*args)
            elif self.trusted_peer and op in getattr(self, "_handlers", {}):
                result = self._handlers[op](*args)
            else:
                raise ProtocolError(f"operation {op!r} is not allowed")
            self._send(("rep", result))
        except (PluginDied, KeyboardInterrupt):
            raise
        except BaseException as exc:  # the requester gets the reason; this side goes on
            import traceback

            tb = traceback.format_exc(limit=-4) if self.trusted_peer else ""
            self._send(("err", f"{type(exc).__name__}: {exc}\n{tb}"))

    def _target(self, oid: Any, method: Any) -> tuple[Callable, Exposed | None]:
        obj = self.objects.get(oid) if isinstance(oid, int) else None
        if obj is None:
            raise ProtocolError(f"no object {oid!r}")
        if not isinstance(method, str):
            raise ProtocolError("method name must be a string")
        if not self.trusted_peer and not isinstance(obj, Exposed):
            raise ProtocolError(f"object {oid!r} is not exposed to the plugin")
        if isinstance(obj, Exposed):  # harness side: allow-list only
            if method not in obj.methods:
                raise ProtocolError(f"method {method!r} is not exposed to the plugin")
            inner = obj.obj
        else:
            inner = obj
        fn = inner if method == "__call__" else getattr(inner, method)
        return fn, (obj if isinstance(obj, Exposed) else None)

    def _materialize(self, v: Any) -> Any:
        """Turn markers the peer sent into live objects of this side."""
        return map_leaves(v, self._live)

    def _live(self, v: Any) -> Any:
        if isinstance(v, Ref):
            proxy = RemoteModule(self, v.oid) if v.kind == "module" else RemoteObject(self, v.oid)
            for name, value in v.attributes.items():
                setattr(proxy, name, value)
            return proxy
        if isinstance(v, MethodGenerator):
            if self.make_generator is None:
                raise ProtocolError("no generator here")
            return self.make_generator()
        return v

    def _call(self, oid: int, method: str, args: Any, kwargs: Any, keep_graph: bool | list) -> Any:
        fn, exposed = self._target(oid, method)
        if exposed is not None and kwargs:
            raise ProtocolError("exposed objects take positional arguments only")
        args = self._materialize(list(args))
        kwargs = self._materialize(dict(kwargs))
        if not keep_graph:
            # A plain query of a model needs no graph; a plugin's own procedure (an attack's
            # perturb) may differentiate inside, so it runs in the default grad mode.
            grad_free = method == "__call__" or exposed is not None
            with torch.no_grad() if grad_free else contextlib.nullcontext():
                return _plain(fn(*args, **kwargs))
        if exposed is not None and not exposed.grad:
            raise ProtocolError("input gradients of this object are not exposed")
        mask = keep_graph if isinstance(keep_graph, list) else [True] * len(args)
        leaves = [
            a.detach().requires_grad_(True) if _floating(a) and bool(m) else a
            for a, m in zip(args, mask, strict=False)
        ] + list(args[len(mask) :])
        with torch.enable_grad():
            out = fn(*leaves, **kwargs)
        gid = next(self._next_graph)
        self._graphs[gid] = (leaves, out)
        while len(self._graphs) > 8:  # a forward whose backward never comes is dropped
            self._graphs.popitem(last=False)
        return [gid, _plain(out)]

    def _vjp(self, gid: int, cotangent: Any, retain: bool) -> Any:
        if gid not in self._graphs:
            raise ProtocolError(f"no recorded forward {gid!r} (dropped or never made)")
        leaves, out = self._graphs[gid] if retain else self._graphs.pop(gid)
        inputs = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
        if not isinstance(cotangent, torch.Tensor) or not isinstance(out, torch.Tensor):
            raise ProtocolError("vjp needs a tensor output and a tensor cotangent")
        with torch.enable_grad():
            grads = torch.autograd.grad(
                out, inputs, cotangent.to(out), retain_graph=retain, allow_unused=True
            )
        it = iter(grads)
        return [
            (next(it) if isinstance(a, torch.Tensor) and a.requires_grad else None) for a in leaves
        ]

    def _getattr(self, oid: int, name: str) -> Any:
        obj = self.objects.get(oid)
        if obj is None or not isinstance(name, str) or name.startswith("_"):
            raise ProtocolError(f"cannot read {name!r}")
        return _plain(getattr(obj, name, None))


def _printable(text: str, keep: str = "\n\t") -> str:
    """``text`` without control characters (but ``keep``): a plugin's error or progress text
    is printed on the user's terminal, where escape sequences could clear it, retitle it or
    forge lines of the run's output."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else "?" for ch in text)


def map_leaves(v: Any, leaf: Callable[[Any], Any]) -> Any:
    """``leaf`` applied to everything inside lists, tuples and dicts (their shape kept)."""
    if isinstance(v, (list, tuple)):
        return type(v)(map_leaves(x, leaf) for x in v)
    if isinstance(v, dict):
        return {k: map_leaves(x, leaf) for k, x in v.items()}
    return leaf(v)


def _floating(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.is_floating_point()


def _plain(v: Any) -> Any:
    """Detach tensors for sending (the sender's graph stays with the sender)."""
    return map_leaves(v, lambda x: x.detach() if isinstance(x, torch.Tensor) else x)


# --------------------------------------------------------------------------- proxies


class _RemoteCall(torch.autograd.Function):
    """A call into the other process as one autograd node: backward asks it for the VJP."""

    @staticmethod
    def forward(ctx, proxy: RemoteModule, method: str, n_args: int, *args: torch.Tensor):
        mask = [isinstance(a, torch.Tensor) and a.requires_grad for a in args]
        gid, out = proxy._endpoint.request("call", proxy._oid, method, list(args), {}, mask)
        out = proxy._checked(method, args, out)
        ctx.proxy, ctx.gid, ctx.args_meta = (
            proxy,
            gid,
            [(a.dtype, a.device) if isinstance(a, torch.Tensor) else None for a in args],
        )
        ctx.n_calls = 0
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        proxy = ctx.proxy
        # retain: the exact trace (one backward per dimension) reuses the same forward.
        grads = proxy._endpoint.request("vjp", ctx.gid, grad_out.detach(), True)
        proxy.backwards += int(grad_out.shape[0]) if grad_out.dim() else 1
        out = []
        for g, meta in zip(grads, ctx.args_meta, strict=True):
            if g is None or meta is None:
                out.append(None)
                continue
            if not isinstance(g, torch.Tensor) or not torch.isfinite(g).all():
                raise InvalidArtifact(f"the model's input gradient of {ctx.gid} is not finite")
            out.append(g.to(dtype=meta[0], device=meta[1]))
        return (None, None, None, *out)


class RemoteObject:
    """An object held by the other process; ``call(name, ...)`` runs one of its methods."""

    def __init__(self, endpoint: Endpoint, oid: int):
        self._endpoint, self._oid = endpoint, oid

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on the remote object without gradients; returns plain data."""
        return self._endpoint.request("call", self._oid, method, list(args), kwargs, False)

    def share(self, exposed: Exposed) -> Ref:
        """Let the process that holds this object call ``exposed`` (e.g. a model to attack)."""
        return self._endpoint.expose(exposed)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("attributes", "methods"):
            raise AttributeError(name)
        attrs = self.__dict__.get("attributes") or {}
        if name in attrs:  # plain values the owner published
            return attrs[name]
        methods = self.__dict__.get("methods")
        if methods is not None and name not in methods:
            raise AttributeError(
                f"the remote {self.__dict__.get('type_name', 'object')} has no {name!r}"
            )
        return lambda *a, **k: self.call(name, *a, **k)


class RemoteModule(RemoteObject):
    """A module held by the other process, called like an ``nn.Module``.

    Tensors go over the socket in both directions; when an input requires grad, the
    call is an autograd node whose backward asks the owner for the vector-Jacobian
    product (the owner keeps the last few forwards' graphs). ``check(method, args, out)``
    verifies every answer and raises InvalidArtifact; ``forwards``/``backwards`` count
    rows through each.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        oid: int,
        check: Callable[[str, tuple, Any], Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__(endpoint, oid)
        self._check, self.dtype, self.device = check, dtype, torch.device(device)
        self.forwards = self.backwards = 0
        self.training = False
        #: Re-asks a few rows of some answers of a fresh copy of the artifact (see Auditor).
        self.auditor: Auditor | None = None

    @classmethod
    def from_reply(cls, endpoint: Endpoint, reply: Any, device: torch.device) -> RemoteModule:
        """The harness's proxy for an artifact a plugin process keeps, from its fit reply."""
        if not isinstance(reply, dict) or not isinstance(reply.get("oid"), int):
            raise ProtocolError("the plugin process answered fit with no artifact handle")
        dtype = getattr(torch, str(reply.get("dtype")), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            dtype = torch.float32
        proxy = cls(endpoint, reply["oid"], dtype=dtype, device=device)
        proxy.is_module = bool(reply.get("is_module"))
        proxy.type_name = str(reply.get("type", ""))[:100]
        attrs = reply.get("attributes")
        proxy.attributes = attrs if isinstance(attrs, dict) else {}
        methods = reply.get("methods")
        proxy.methods = {str(m) for m in methods} if isinstance(methods, list) else set()
        return proxy

    def _checked(self, method: str, args: tuple, out: Any) -> Any:
        out = _to_device(out, self.device)
        if self._check is not None:
            res = self._check(method, args, out)
            out = out if res is None else res
        if isinstance(out, torch.Tensor) and out.dim():
            self.forwards += int(out.shape[0])
        if self.auditor is not None:
            self.auditor.maybe(method, args, out)
        return out

    def __call__(self, *args: Any) -> Any:
        return self.method("forward", *args)

    def forward(self, *args: Any) -> Any:
        """Same as calling the module."""
        return self.method("forward", *args)

    def method(self, name: str, *args: Any) -> Any:
        """Call ``name`` (a tensor-in, tensor-out method), differentiable in tensor inputs."""
        remote_name = "__call__" if name == "forward" else name
        if torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args
        ):
            return _RemoteCall.apply(self, remote_name, len(args), *args)
        out = self._endpoint.request("call", self._oid, remote_name, list(args), {}, False)
        return self._checked(remote_name, args, out)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call any method without gradients; answers are checked like forwards."""
        out = self._endpoint.request("call", self._oid, method, list(args), kwargs, False)
        return self._checked(method, tuple(args), out)

    # The evaluators treat models as nn.Modules; these keep that code path unchanged.
    def eval(self) -> RemoteModule:
        """No-op (the owner put the artifact in eval mode); returns self."""
        return self

    def to(self, *args: Any, **kwargs: Any) -> RemoteModule:
        """Only records the device answers are moved to; returns self."""
        for a in [*args, kwargs.get("device")]:
            if isinstance(a, (str, torch.device)):
                self.device = torch.device(a)
        return self

    def parameters(self) -> Iterator[torch.Tensor]:
        """One empty tensor of the model's dtype (what ``next(model.parameters()).dtype`` needs)."""
        yield torch.empty(0, dtype=self.dtype, device=self.device)

    def requires_grad_(self, flag: bool = True) -> RemoteModule:
        """No-op: the harness never trains a remote model."""
        return self


class Auditor:
    """Spot checks that a remote artifact answers each input row on its own, from its trained
    state only: a few rows of some answers are asked again, alone, of a fresh copy of the
    artifact restored from a snapshot taken right after training (in another plugin
    process that has seen no query). A model that pools a batch (denoising CERTIFY's noisy
    copies of one point), remembers earlier queries (the clean test points before their
    perturbations), or lets one method see another's inputs answers differently there;
    the cell is then ``invalid``. Which rows and when is drawn from the evaluation's
    stream, after the answer was given.
    """

    def __init__(
        self,
        fresh: RemoteModule,
        generator: torch.Generator,
        rate: float = 0.05,
        rows: int = 4,
        max_audits: int = 200,
        rtol: float = 1e-3,
        atol: float = 1e-3,
    ):
        self.fresh, self.gen = fresh, generator
        self.rate, self.rows, self.max_audits, self.rtol, self.atol = (
            rate,
            rows,
            max_audits,
            rtol,
            atol,
        )
        self.audits = 0
        self.calls = 0

    def maybe(self, method: str, args: tuple, out: Any) -> None:
        """Audit this answer with probability ``rate`` (always the first one)."""
        self.calls += 1
        if self.audits >= self.max_audits:
            return
        n = next((len(a) for a in args if isinstance(a, torch.Tensor) and a.dim()), 0)
        if n == 0:
            return
        first = self.audits == 0
        if not first and float(torch.rand((), generator=self.gen)) >= self.rate:
            return
        self.audits += 1
        idx = torch.randperm(n, generator=self.gen)[: self.rows]
        sub = [
            a.detach()[idx.to(a.device)] if isinstance(a, torch.Tensor) and a.dim() and len(a) == n
            else a
            for a in args
        ]  # fmt: skip
        with torch.no_grad():
            again = self.fresh.call(method, *sub)
        mine, theirs = _tensors(out), _tensors(again)
        if [k for k, _ in mine] != [k for k, _ in theirs]:
            raise InvalidArtifact(
                f"audit: {method} answers a batch of {n} and a batch of its own rows in "
                "different forms: answers must depend only on their own input row"
            )
        for (name, a), (_, b) in zip(mine, theirs, strict=True):
            a, b = a.detach().double().cpu(), b.detach().double().cpu()
            # A per-row tensor is compared on the audited rows; one shared by all rows (a
            # prior's (L,) mean) whole. Shape alone cannot tell them apart when L happens
            # to equal the batch size, so the answer the fresh copy gave decides.
            per_row = a.dim() > 0 and len(a) == n and b.dim() > 0 and len(b) == len(idx)
            ways = [a[idx]] if per_row and a.shape[1:] == b.shape[1:] else []
            ways += [a] if a.shape == b.shape else []
            if not any(
                torch.allclose(w, b, rtol=self.rtol, atol=self.atol, equal_nan=True) for w in ways
            ):
                diff = float((ways[0] - b).abs().max()) if ways else float("inf")
                raise InvalidArtifact(
                    f"audit: {method}'s {name} for rows {idx.tolist()} of a batch of {n} differs "
                    f"(max |diff| {diff:.3g}) when the same rows are asked alone of a fresh copy "
                    "of the trained artifact: answers must depend only on their own input row, "
                    "not on the rest of the batch or on earlier queries"
                )

    def summary(self) -> dict[str, Any]:
        """For the record's estimator: how many answers were audited, and how."""
        return {"audited_calls": self.audits, "calls": self.calls, "rows_per_audit": self.rows,
                "rate": self.rate, "rtol": self.rtol, "atol": self.atol}  # fmt: skip


@contextlib.contextmanager
def audit_every_call(model: Any, rows: int = 16) -> Iterator[None]:
    """Inside the block, audit every answer of ``model`` on ``rows`` rows, where it has an auditor.

    For queries a plugin could recognise and answer by pooling rows (many transformed
    copies of each point): the per-call rate then leaves too many unchecked. A model
    the harness owns has no auditor, and the block changes nothing.
    """
    auditor = getattr(model, "auditor", None)
    if auditor is None:
        yield
        return
    saved = auditor.rate, auditor.rows, auditor.max_audits
    auditor.rate, auditor.rows = 1.0, max(rows, auditor.rows)
    auditor.max_audits = auditor.audits + 10_000  # these audits are not the sampled ones
    try:
        yield
    finally:
        auditor.rate, auditor.rows, auditor.max_audits = saved


def _tensors(v: Any, name: str = "answer") -> list[tuple[str, torch.Tensor]]:
    """The tensors an answer is compared by: itself, or a distribution's mean and variance."""
    if isinstance(v, torch.Tensor):
        return [(name, v)]
    if isinstance(v, torch.distributions.Distribution):
        out = []
        for attr in ("mean", "variance"):
            try:
                out.append((f"{name}.{attr}", getattr(v, attr)))
            except (NotImplementedError, ValueError):
                continue
        return out
    if isinstance(v, (list, tuple)):
        return [t for i, x in enumerate(v) for t in _tensors(x, f"{name}[{i}]")]
    return []


def _to_device(v: Any, device: torch.device) -> Any:
    def leaf(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, torch.distributions.Distribution) and device.type != "cpu":
            return _dist_to(x, device)
        return x

    return map_leaves(v, leaf)


def _dist_to(d: torch.distributions.Distribution, device: torch.device):
    if isinstance(d, torch.distributions.Independent):
        return torch.distributions.Independent(
            _dist_to(d.base_dist, device), d.reinterpreted_batch_ndims
        )
    cls, names = _DISTRIBUTIONS[type(d).__name__]
    kwargs = {p: getattr(d, p).to(device) for p in names}
    return (
        cls(**kwargs, validate_args=False)
        if cls.__module__.startswith("torch.")
        else cls(**kwargs)
    )
