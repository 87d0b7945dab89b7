"""The empirical NTK of a module layer by layer: ``nn.Linear`` layers in closed form.

For a linear layer ``h = W a + b`` applied once to each input row, the Jacobian rows of
output ``k`` at point ``i`` in ``W`` and ``b`` are ``g_ik a_i^T`` and ``g_ik``, with
``a_i`` the layer's input and ``g_ik = d f_ik / d h_i``. Their contribution to the NTK is

    Theta[(i, k), (j, l)] += (g_ik . g_jl) (a_i . a_j + [bias])

so a layer costs ``N1 N2 K^2 (out + in)`` instead of the ``N1 N2 K^2 in out`` of a
Jacobian contraction, and one forward and K backward passes per chunk of points instead
of one backward pass per point (the per-example-gradient trick of Goodfellow 2015,
applied to Gram matrices). Every other parameter (convolutions, ``nn.Parameter`` used in
plain expressions, a Linear that is called twice or whose weight is also used elsewhere)
goes through :func:`~dltbench.tasks.ntk.kernels.empirical_ntk` (``auto-loop``).

Each chunk checks the closed form against autograd: the gradient of the summed output
``k`` in ``W`` must equal ``sum_i g_ik a_i^T`` (and ``sum_i g_ik`` for ``b``), which
fails when the weight has any other use; then the whole kernel falls back. The harness
audits the result like any plugin answer (``task.audit_kernel``): this is a speed path
of honest code, never a reason to trust the plugin process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from .kernels import DEFAULT_MEMORY, _chunk_plan, empirical_ntk

#: Relative tolerance of the closed form's self-check against autograd's gradient (float64
#: rounding is ~1e-15; a weight with another use is off by O(1)).
CHECK_RTOL = 1e-9

Features = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (A (N, in), G (N, K, out))


class _NotClosedForm(Exception):
    """A layer found eligible on the first chunk failed the self-check on a later one."""


def linear_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Submodules the closed form may handle: plain ``nn.Linear`` (its own forward, no hooks)."""
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear)
        and type(m).forward is nn.Linear.forward
        and not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
    }


def _param_names(layer_name: str, layer: nn.Module) -> list[str]:
    prefix = f"{layer_name}." if layer_name else ""
    return [prefix + n for n, p in layer.named_parameters(recurse=False) if p is not None]


def _features(
    module: nn.Module,
    params: dict[str, torch.Tensor],
    layers: dict[str, nn.Module],
    x: torch.Tensor,
) -> tuple[Features, set[str]]:
    """(A, G) of every layer of ``layers`` on the rows ``x``; the second value names the
    layers whose closed form disagreed with autograd (or that were not called exactly once
    on a (len(x), in) input): their features are left out."""
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in layers}

    def recorder(name: str) -> Callable:
        def hook(_mod, inputs, output):
            calls[name].append((inputs[0] if inputs else None, output))

        return hook

    mine = {pn for ln, m in layers.items() for pn in _param_names(ln, m)}
    leaves = {n: p.detach().requires_grad_(n in mine) for n, p in params.items()}
    handles = [m.register_forward_hook(recorder(n)) for n, m in layers.items()]
    try:
        with torch.enable_grad():
            out = functional_call(module, leaves, (x,))
    finally:
        for h in handles:
            h.remove()
    n = len(x)
    bad = set()
    for name, seen in calls.items():
        ok = len(seen) == 1 and isinstance(seen[0][0], torch.Tensor)
        if ok:
            a, h = seen[0]
            ok = a.dim() == 2 and h.dim() == 2 and len(a) == n and len(h) == n
        if not ok:
            bad.add(name)
    if out.dim() != 2 or len(out) != n:
        raise ValueError(f"the module's output has shape {tuple(out.shape)}, expected (N, K)")
    if not out.requires_grad:  # no layer reaches the output
        bad.update(layers)
    live = [name for name in layers if name not in bad]
    if not live:
        return {}, bad
    k = out.shape[1]
    outs = [calls[name][0][1] for name in live]
    pnames = [[pn for pn in _param_names(name, layers[name]) if pn in leaves] for name in live]
    flat_p = [leaves[pn] for names in pnames for pn in names]
    g_rows: dict[str, list[torch.Tensor]] = {name: [] for name in live}
    with torch.enable_grad():
        for j in range(k):
            grads = torch.autograd.grad(
                out[:, j].sum(), outs + flat_p, retain_graph=j < k - 1, allow_unused=True
            )
            gh, gp = grads[: len(outs)], iter(grads[len(outs) :])
            for name, h, g, names in zip(live, outs, gh, pnames, strict=True):
                g = torch.zeros_like(h) if g is None else g.detach()
                g_rows[name].append(g)
                a = calls[name][0][0].detach()
                for pn in names:
                    total = next(gp)
                    total = torch.zeros_like(leaves[pn]) if total is None else total
                    closed = g.T @ a if total.dim() == 2 else g.sum(0)
                    scale = float(g.norm() * (a.norm() if total.dim() == 2 else n**0.5))
                    if float((total - closed).norm()) > CHECK_RTOL * (scale + 1e-300):
                        bad.add(name)
    feats = {
        name: (calls[name][0][0].detach(), torch.stack(g_rows[name], 1).detach())
        for name in live
        if name not in bad
    }
    return feats, bad


def _contract(f1: Features, f2: Features, biased: set[str]) -> torch.Tensor:
    """sum over layers of (G1 G2^T) * (A1 A2^T [+1 with a bias]) as (N1*K, N2*K)."""
    out = None
    for name, (a1, g1) in f1.items():
        a2, g2 = f2[name]
        n1, k, _ = g1.shape
        n2 = len(g2)
        gg = (g1.reshape(n1 * k, -1) @ g2.reshape(n2 * k, -1).T).view(n1, k, n2, k)
        aa = a1 @ a2.T
        if name in biased:
            aa += 1.0
        term = gg.mul_(aa[:, None, :, None])
        out = term if out is None else out.add_(term)
    return out.reshape(n1 * k, n2 * k)


def empirical_ntk_layers(
    module: nn.Module,
    params: dict[str, torch.Tensor] | None,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    memory: int = DEFAULT_MEMORY,
) -> torch.Tensor:
    """Empirical NTK (N1*K, N2*K) of ``module`` at ``params`` (name -> tensor, as for
    ``torch.func.functional_call``; None: its own parameters), ``nn.Linear`` layers in closed
    form, every other parameter by :func:`empirical_ntk` ``auto-loop``. Chunked over points so the
    features held stay within about ``memory`` bytes. Equals
    :func:`empirical_ntk` of the whole module up to float rounding (tested).

    The module must be a function of each input row alone (what the ``ntk`` task requires
    and audits).
    """
    if params is None:
        params = {n: p.detach() for n, p in module.named_parameters()}
    names = list(params)
    layers = linear_layers(module)
    owned = {pn: name for name, m in layers.items() for pn in _param_names(name, m)}
    # Which layers qualify is decided on a few rows; every chunk is checked again.
    try:
        _, bad = _features(module, params, layers, x1[: min(len(x1), 4)])
    except RuntimeError:  # autograd refused (e.g. an in-place op on a saved tensor)
        bad = set(layers)
    layers = {n: m for n, m in layers.items() if n not in bad}
    fast = [pn for pn in names if owned.get(pn) in layers]
    rest = [pn for pn in names if pn not in fast]
    if not layers:
        return _others(module, params, rest, x1, x2, memory)
    biased = {n for n, m in layers.items() if m.bias is not None}

    def features(x: torch.Tensor) -> Features:
        feats, failed = _features(module, params, layers, x)
        if failed:
            raise _NotClosedForm(sorted(failed))
        return feats

    k = _n_outputs(module, params, x1)
    itemsize = next(iter(params.values())).element_size()
    row_bytes = sum(m.in_features + k * m.out_features for m in layers.values()) * itemsize
    try:
        out = _chunk_plan(
            features, lambda f1, f2: _contract(f1, f2, biased), x1, x2, k, row_bytes, memory
        )
    except (_NotClosedForm, RuntimeError):
        return _others(module, params, names, x1, x2, memory)
    if rest:
        out += _others(module, params, rest, x1, x2, memory)
    return out


def _n_outputs(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(functional_call(module, params, (x[:1],)).shape[-1])


def _others(module, params, which: list[str], x1, x2, memory: int) -> torch.Tensor:
    """The NTK restricted to the parameters ``which`` (the others held fixed), by
    :func:`empirical_ntk` ``auto-loop`` (the per-sample Jacobian loop for few outputs)."""
    fixed = {n: p.detach() for n, p in params.items() if n not in which}

    def f(ps: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, {**fixed, **dict(zip(which, ps, strict=True))}, (x,))

    return empirical_ntk(f, tuple(params[n] for n in which), x1, x2, "auto-loop", memory)
