"""The layer-wise closed form of the empirical NTK (nn.Linear layers) against the Jacobian
contraction, on every built-in family and on modules it must not take at face value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dltbench import registry
from dltbench.api import Context, InvalidArtifact
from dltbench.tasks.ntk import WidthFamily, layered
from dltbench.tasks.ntk.kernels import ntk_jacobian
from dltbench.tasks.ntk.methods import ReluNTK1
from dltbench.tasks.ntk.task import IOSpec, to_sphere

BUILTINS = ["relu-ntk-d1", "relu-ntk-d2", "relu-ntk-d3", "erf-ntk", "relu-standard", "cnn-gap",
            "mup-mlp"]  # fmt: skip
#: Parameters outside the closed form (not an nn.Linear's), per built-in.
OTHERS = {"cnn-gap": ["conv"]}


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return to_sphere(torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64))


def reference(module: nn.Module, params: dict, x1, x2=None) -> torch.Tensor:
    names = list(params)

    def f(ps, x):
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    return ntk_jacobian(f, tuple(params.values()), x1, x2)


@pytest.fixture
def others_seen(monkeypatch):
    """The parameter names each call sent to the per-sample fallback."""
    seen: list[list[str]] = []
    real = layered._others

    def spy(module, params, which, *args):
        seen.append(list(which))
        return real(module, params, which, *args)

    monkeypatch.setattr(layered, "_others", spy)
    return seen


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_family_matches_the_jacobian_contraction(name, k, others_seen):
    registry.discover("ntk")
    method = registry.get_method_class("ntk", name)()
    torch.manual_seed(0)  # relu-standard draws from the global generator
    module = method.build(12, IOSpec((1, 6, 6), k), Context(0, torch.device("cpu")))
    fam = WidthFamily({12: module})
    theta = fam.init_params(12)
    params = dict(zip([n for n, _ in fam._params(12)], fam.split(12, theta), strict=True))
    x = images(9)
    for x2 in (None, x[:4]):
        got = fam.ntk(12, theta, x, x2)
        torch.testing.assert_close(got, reference(fam.modules[12], params, x, x2),
                                   rtol=1e-10, atol=1e-10)  # fmt: skip
    assert others_seen == [OTHERS[name]] * 2 if name in OTHERS else not others_seen


class Mixed(nn.Module):
    """A Linear, a free scale (not a Linear's), a Linear used twice, a Linear whose weight is
    also used outside it, and a Linear fed a 3-d input: only the first may be closed form."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = nn.Linear(36, 10)
        self.scale = nn.Parameter(torch.rand(10, generator=g) + 0.5)
        self.twice = nn.Linear(10, 10)
        self.tied = nn.Linear(10, 10, bias=False)
        self.seq = nn.Linear(5, 4)
        self.head = nn.Linear(10 + 8, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x.flatten(1)) * self.scale)
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        h = torch.tanh(self.tied(h)) + 0.3 * h @ self.tied.weight
        s = torch.tanh(self.seq(h[:, :10].reshape(len(h), 2, 5))).flatten(1)
        return self.head(torch.cat([h, s], 1))


def test_a_module_with_parameters_outside_the_closed_form_matches(others_seen):
    torch.manual_seed(0)
    module = Mixed().double()
    params = {n: p.detach() for n, p in module.named_parameters()}
    x = images(7)
    for x2 in (None, x[:3]):
        got = layered.empirical_ntk_layers(module, params, x, x2)
        torch.testing.assert_close(got, reference(module, params, x, x2), rtol=1e-5, atol=1e-10)
    fallback = set(others_seen[0])
    assert fallback == {"scale", "twice.weight", "twice.bias", "tied.weight", "seq.weight",
                        "seq.bias"}  # fmt: skip


def test_chunked_closed_form_matches_the_whole_one():
    module = Mixed().double()
    params = {n: p.detach() for n, p in module.named_parameters()}
    x = images(11)
    whole = layered.empirical_ntk_layers(module, params, x, x[:5])
    row = (36 + 2 * 10 + 18 + 2 * 2) * 8  # closed-form features of one point, bytes
    for memory in (3 * row, 8 * row, 40 * row):  # chunk both, keep x2's, one block
        torch.testing.assert_close(layered.empirical_ntk_layers(module, params, x, x[:5], memory),
                                   whole, rtol=1e-12, atol=1e-12)  # fmt: skip
        sym = layered.empirical_ntk_layers(module, params, x, None, memory)
        torch.testing.assert_close(sym, reference(module, params, x), rtol=1e-5, atol=1e-10)


def test_a_failed_self_check_on_a_later_chunk_falls_back_for_the_whole_kernel(others_seen):
    class Sneaky(nn.Module):
        """Reuses its Linear's weight only in batches of more than 4 rows: the probe rows
        (4) pass the self-check, the kernel's chunk (8 rows) does not. (Such a module is not
        a function of each row alone, which the harness judges invalid anyway.)"""

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(36, 1)

        def forward(self, x):
            out = self.lin(x.flatten(1))
            return out + (len(x) > 4) * (x.flatten(1) @ self.lin.weight.T) ** 2

    module = Sneaky().double()
    params = {n: p.detach() for n, p in module.named_parameters()}
    x = images(8)
    got = layered.empirical_ntk_layers(module, params, x, None)

    def f(ps, xx):
        return torch.func.functional_call(module, dict(zip(params, ps, strict=True)), (xx,))

    ref = ntk_jacobian(f, tuple(params.values()), x, None, loop=True)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert others_seen == [["lin.weight", "lin.bias"]]


def test_the_harness_audit_still_checks_the_closed_form(monkeypatch):
    """A closed form that went wrong in the plugin process (here: its contraction scaled by
    1.01) is caught by the harness's probe audit, exactly as a forged kernel is."""
    from tests.unit.test_ntk import family_of, score, tiny_config

    config = tiny_config(widths=(16,), steps=1)
    fam, data = family_of(ReluNTK1(), config)
    real = layered._contract
    monkeypatch.setattr(layered, "_contract", lambda *a: 1.01 * real(*a))
    with pytest.raises(InvalidArtifact, match="NTK gives"):
        score(fam, data, config)
