"""The plugin boundary's wire protocol: safe decoding, oracles with autograd, allow-lists."""

from __future__ import annotations

import json
import math
import pickle
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection

import numpy as np
import pytest
import torch
from torch import nn

from dltbench.oracle import (
    Endpoint,
    Exposed,
    MethodGenerator,
    PluginError,
    ProtocolError,
    RemoteModule,
    decode,
    encode,
)


def test_round_trip_of_plain_data_tensors_and_distributions():
    normal = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(3, 2), torch.ones(3, 2)), 1
    )
    obj = {
        "a": [1, 2.5, float("nan"), "s", None, True],
        "t": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "tup": (torch.tensor([1, 2]), 3),
        "d": normal,
    }
    out = decode(encode(obj))
    assert (
        out["a"][:2] == [1, 2.5]
        and out["a"][2] != out["a"][2]
        and out["a"][3:] == ["s", None, True]
    )
    assert torch.equal(out["t"], obj["t"]) and out["t"].dtype == torch.float32
    assert isinstance(out["tup"], tuple) and torch.equal(out["tup"][0], torch.tensor([1, 2]))
    assert isinstance(out["d"], torch.distributions.Independent)
    assert out["d"].event_shape == (2,) and out["d"].batch_shape == (3,)
    z = torch.randn(3, 2)
    assert torch.allclose(out["d"].log_prob(z), normal.log_prob(z))


@pytest.mark.parametrize(
    "t",
    [
        torch.tensor(1.5, dtype=torch.float64),  # 0-d
        torch.zeros(0, 3),  # empty
        torch.arange(12).reshape(3, 4)[:, ::2],  # not contiguous
        torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # transposed view
        torch.tensor([[True, False]]),
        torch.tensor([1, -2], dtype=torch.int8),
        torch.tensor([0.5, 2.0], dtype=torch.float16),
    ],
)
def test_every_tensor_layout_and_dtype_round_trips_exactly(t):
    out = decode(encode([t, np.asarray(t)]))
    for got in (out[0], torch.from_numpy(out[1])):
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
    out[0].add_(1) if t.dtype != torch.bool else out[0].logical_not_()  # owned and writable


def test_bfloat16_is_sent_as_float32_and_other_dtypes_are_refused():
    out = decode(encode([torch.tensor([1.5], dtype=torch.bfloat16)]))
    assert out[0].dtype == torch.float32 and out[0].item() == 1.5
    for bad in (torch.ones(2, dtype=torch.complex64), np.ones(2, dtype=np.complex64)):
        with pytest.raises(TypeError, match="cannot cross"):
            encode([bad])


@pytest.mark.parametrize(
    "frame",
    [
        pickle.dumps({"a": 1}),  # a pickle is never unpickled by the harness
        b"",
        encode([1])[:-1] + b"x",  # header that is not JSON
    ],
)
def test_decode_rejects_what_encode_did_not_write(frame):
    with pytest.raises(ProtocolError):
        decode(frame)


def _forge(v, bufs=(), sizes=None, raw_header=None) -> bytes:
    """A frame with a well-formed length prefix around whatever header a hostile plugin writes."""
    header = raw_header
    if header is None:
        header = json.dumps({"v": v, "sizes": [len(b) for b in bufs] if sizes is None else sizes})
        header = header.encode()
    return struct.pack("<I", len(header)) + header + b"".join(bufs)


def _t(i, shape, dtype="float32"):
    return {"__t__": i, "dtype": dtype, "shape": shape}


def test_decode_rejects_forged_markers_and_sizes():
    good = encode({"x": torch.zeros(4)})
    # A tensor whose buffer is shorter than its shape says.
    with pytest.raises(ProtocolError):
        decode(good[:-4])
    for forged in ({"__ref__": 1}, {"__pickle__": "x"}, _t(0, [1], dtype="object")):
        with pytest.raises(ProtocolError, match="reference|marker|dtype"):
            decode(_forge(forged, [b"\0" * 4]))


@pytest.mark.parametrize(
    "frame",
    [
        _forge({"__tuple__": 5}),  # not a list
        _forge({"__tuple__": {"__t__": 0}}),  # a dict's keys would become the tuple
        _forge(_t(0, [1] * 65), [b"\0" * 4]),  # numpy allows 64 dimensions
        _forge(_t(0, [0, 2**70]), [b""]),  # empty, but no array has such a dimension
        _forge(_t(0, [True]), [b"\0" * 4]),  # a bool is not a dimension
        _forge(_t(True, [1]), [b"", b"\0" * 4]),  # nor a buffer index
        _forge(_t(0, [1], dtype=["float32"]), [b"\0" * 4]),  # an unhashable dtype
        _forge([], [b"x"], sizes=[True]),  # nor a size
        _forge(None, raw_header=b'{"sizes":[]}'),  # no value
        _forge(None, raw_header=b"[1]"),  # not an object
        _forge(None, raw_header=b'{"v":NaN,"sizes":[]}'),  # not JSON: encode writes markers
        _forge(None, raw_header=b'{"v":[-Infinity],"sizes":[]}'),
    ],
    ids=lambda f: f[4:40].decode(errors="replace"),
)
def test_malformed_frames_are_protocol_errors_not_harness_errors(frame):
    # A TypeError or ValueError from inside decode would end the cell as 'failed' in the
    # harness's own code; the contract is: anything encode did not write is a ProtocolError.
    with pytest.raises(ProtocolError):
        decode(frame)


def test_a_buffer_can_be_read_only_once():
    # 1 MiB named 200 times would decode to 200 MiB: a small frame must not cost the harness
    # far more memory than its own size.
    buf = bytes(2**20)
    with pytest.raises(ProtocolError, match="used twice"):
        decode(_forge([_t(0, [2**18])] * 200, [buf]))


@pytest.mark.parametrize(
    "name, params",
    [
        # N x 1 and 1 x N: N^2 numbers once the harness asks for a variance
        ("Normal", {"loc": _t(0, [300, 1]), "scale": _t(1, [1, 300])}),
        # a rank-40000 factor of a 1-d normal: its constructor factors 40000 x 40000
        ("LowRankMultivariateNormal",
         {"loc": _t(0, [1]), "cov_factor": _t(1, [1, 40000]), "cov_diag": _t(2, [1])}),
        ("LowRankMultivariateNormal",  # batches that broadcast inside the constructor
         {"loc": _t(0, [300, 2]), "cov_factor": _t(1, [300, 1, 2, 2]), "cov_diag": _t(2, [300, 2])}),
        ("MultivariateNormal", {"loc": _t(0, [3]), "scale_tril": _t(1, [3, 2])}),
    ],
)  # fmt: skip
def test_distribution_parameters_that_would_amplify_are_refused(name, params):
    bufs = [bytes(4 * math.prod(p["shape"])) for p in params.values()]
    start = time.perf_counter()
    with pytest.raises(ProtocolError, match="batch shape|rank|n x n"):
        decode(_forge({"__dist__": name, "params": params}, bufs))
    assert time.perf_counter() - start < 1.0


def test_honest_distributions_still_cross():
    d = torch.distributions
    honest = [
        d.Normal(torch.zeros(4, 3), 1.0),  # a scalar scale: encode sends it at full shape
        d.Independent(d.Laplace(torch.zeros(2, 3), torch.ones(3)), 1),
        d.MultivariateNormal(torch.zeros(5, 3), scale_tril=torch.eye(3)),
        d.LowRankMultivariateNormal(torch.zeros(2, 4), torch.ones(2, 4, 2), torch.ones(4)),
        d.Categorical(logits=torch.zeros(3, 5)),
        d.Bernoulli(logits=torch.zeros(6)),
    ]
    for dist in honest:
        out = decode(encode(dist))
        z = dist.sample()
        assert type(out) is type(dist) and out.batch_shape == dist.batch_shape
        assert torch.allclose(out.log_prob(z), dist.log_prob(z))


def test_encode_sends_only_a_views_own_bytes():
    secret = torch.arange(1000, dtype=torch.float32)
    for view in (secret[10:12], secret.reshape(100, 10)[3:4, 2:4], secret[::500]):
        frame = encode([view])
        (hlen,) = struct.unpack_from("<I", frame)
        assert len(frame) - 4 - hlen == view.numel() * 4
        assert torch.equal(decode(frame)[0], view)


def test_a_pickled_request_carries_only_a_views_own_storage():
    # The harness pickles what the codec cannot write (a training view's dataclass, a
    # request with a generator); a pickled view would carry its whole storage with it.
    a, b = socket.socketpair()
    harness = Endpoint(Connection(a.detach()), trusted_peer=False)
    worker = Endpoint(Connection(b.detach()), trusted_peer=True)

    def storage(x, generator):
        return [x.untyped_storage().nbytes(), x.tolist(), type(generator).__name__]

    thread = threading.Thread(target=worker.serve_forever, args=({"storage": storage},))
    thread.start()
    try:
        secret = torch.arange(1000, dtype=torch.float32)
        nbytes, values, gen = harness.request("storage", secret[:2], MethodGenerator())
        assert (nbytes, values, gen) == (8, [0.0, 1.0], "MethodGenerator")
        param = nn.Parameter(torch.arange(6.0).reshape(2, 3))
        nbytes, values, _ = harness.request("storage", param[:, 1], MethodGenerator())
        assert (nbytes, values) == (8, [1.0, 4.0])
    finally:
        harness.request("close")
        thread.join(timeout=5)


def test_encode_refuses_plugin_classes():
    class Mine(torch.distributions.Normal):
        pass

    with pytest.raises(TypeError):
        encode(Mine(torch.zeros(1), torch.ones(1)))
    with pytest.raises(TypeError):
        encode(object())


@pytest.fixture
def pair():
    """A harness endpoint and a worker endpoint in a thread, over a socketpair."""
    a, b = socket.socketpair()
    harness = Endpoint(Connection(a.detach()), trusted_peer=False)
    worker = Endpoint(Connection(b.detach()), trusted_peer=True)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    oid = worker.expose(model).oid
    thread = threading.Thread(
        target=worker.serve_forever,
        args=({"probe": lambda ref: worker._materialize(ref).call("secret_len")},),
        daemon=True,
    )
    thread.start()
    yield harness, worker, model, oid
    harness.request("close")
    thread.join(timeout=5)


def test_remote_forward_and_input_gradient_equal_local(pair):
    harness, _, model, oid = pair
    proxy = RemoteModule(harness, oid, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    out = proxy(x)
    assert torch.allclose(out, model(x))
    (g,) = torch.autograd.grad(out[:, 1].sum(), x)
    x2 = x.detach().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(model(x2)[:, 1].sum(), x2)
    assert torch.allclose(g, g_ref)
    assert proxy.forwards == 5 and proxy.backwards == 5


def test_every_answer_is_checked(pair):
    harness, _, _, oid = pair

    def check(method, args, out):
        if out.shape[1] != 10:
            from dltbench.api import InvalidArtifact

            raise InvalidArtifact("wrong number of classes")

    proxy = RemoteModule(harness, oid, check=check, dtype=torch.float64)
    from dltbench.api import InvalidArtifact

    with pytest.raises(InvalidArtifact):
        proxy(torch.randn(2, 4, dtype=torch.float64))


def test_plugin_may_call_only_allow_listed_methods(pair):
    harness, _, _, _ = pair

    class Target:
        def log_prob(self, x):
            return -(x**2).sum(1)

        def secret_len(self):
            return 42

    ref = harness.expose(Exposed(Target(), frozenset({"log_prob"}), kind="object"))
    with pytest.raises(PluginError, match="not exposed"):
        harness.request("probe", ref)


def test_a_plugin_error_carries_its_traceback(pair):
    harness, _, _, oid = pair
    with pytest.raises(PluginError, match="mat1 and mat2|shapes"):
        RemoteModule(harness, oid)(torch.randn(2, 7, dtype=torch.float64))


def test_a_plugins_error_and_progress_text_reach_the_terminal_without_control_characters():
    # A plugin's error text and progress labels are printed on the user's terminal: an
    # escape sequence could clear it, set its title or forge a line of the run's output.
    a, b = socket.socketpair()
    harness = Endpoint(Connection(a.detach()), trusted_peer=False)
    plugin = Connection(b.detach())
    seen = []
    harness.on_progress = lambda desc, done, total: seen.append(desc)
    plugin.send_bytes(b"E" + encode(["progress", "step\x1b[2J\x1b]0;pwned\x07", 1, 2]))
    plugin.send_bytes(b"E" + encode(["err", "boom\x1b[1A\rok  fake-method  acc=1.0\nline 2"]))
    with pytest.raises(PluginError) as info:
        harness.request("call", 1, "forward", [], {}, False)
    assert seen == ["step?[2J?]0;pwned?"]
    assert str(info.value) == "boom?[1A?ok  fake-method  acc=1.0\nline 2"


@pytest.mark.parametrize("msg", [["rep"], ["err"], ["req"]])
def test_a_message_without_a_body_is_a_protocol_error(msg):
    a, b = socket.socketpair()
    harness = Endpoint(Connection(a.detach()), trusted_peer=False)
    plugin = Connection(b.detach())
    plugin.send_bytes(b"E" + encode(msg))
    with pytest.raises(ProtocolError, match="its kind, then its body"):
        harness.request("call", 1, "forward", [], {}, False)
    plugin.close()


def test_progress_counts_that_no_float_holds_are_dropped():
    a, b = socket.socketpair()
    harness = Endpoint(Connection(a.detach()), trusted_peer=False)
    plugin = Connection(b.detach())
    seen = []
    harness.on_progress = lambda desc, done, total: seen.append((done, total))
    for done, total in ((1, 10**400), (True, 2), (-1, 2), (1, 2)):
        plugin.send_bytes(b"E" + encode(["progress", "step", done, total]))
    plugin.send_bytes(b"E" + encode(["rep", None]))
    assert harness.request("call", 1, "forward", [], {}, False) is None
    assert seen == [(1, 2)]


def test_the_auditor_compares_a_shared_answer_whole_even_when_its_length_is_the_batch_size():
    """A prior's mean is shared by every row, shape (L,): with L equal to the batch size it
    looked per-row, was cut to the audited rows and called a batch-dependent answer."""
    from dltbench.api import InvalidArtifact
    from dltbench.oracle import Auditor

    latent = 8

    class Fresh:
        def __init__(self, fn):
            self.fn = fn

        def call(self, method, *args):
            return self.fn(*args)

    def prior(y):  # the same N(0, I) for every label
        zeros = torch.zeros(latent)
        return torch.distributions.Independent(torch.distributions.Normal(zeros, 1 + zeros), 1)

    y = torch.arange(latent)  # a batch of exactly L labels
    for seed in range(5):
        Auditor(Fresh(prior), torch.Generator().manual_seed(seed)).maybe("prior", (y,), prior(y))

    def peeking(y):  # per-row answers that depend on the batch: still caught
        return torch.full((len(y), 2), float(len(y)))

    bad = Auditor(Fresh(peeking), torch.Generator().manual_seed(0))
    with pytest.raises(InvalidArtifact, match="audit"):
        bad.maybe("__call__", (y,), peeking(y))
