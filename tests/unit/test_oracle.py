"""The plugin boundary's wire protocol: safe decoding, oracles with autograd, allow-lists."""

from __future__ import annotations

import pickle
import socket
import threading
from multiprocessing.connection import Connection

import numpy as np
import pytest
import torch
from torch import nn

from dltbench.oracle import (
    Endpoint,
    Exposed,
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


def test_decode_rejects_forged_markers_and_sizes():
    good = encode({"x": torch.zeros(4)})
    # A tensor whose buffer is shorter than its shape says.
    with pytest.raises(ProtocolError):
        decode(good[:-4])
    for forged in (
        {"__ref__": 1},
        {"__pickle__": "x"},
        {"__t__": 0, "dtype": "object", "shape": [1]},
    ):
        frame = encode([0]).replace(
            b"[0]", pickle.dumps(0)[:0] + __import__("json").dumps(forged).encode()
        )
        with pytest.raises(ProtocolError):
            decode(frame)


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
