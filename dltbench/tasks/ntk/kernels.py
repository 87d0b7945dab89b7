"""Neural tangent kernels: empirical (torch.func), analytic (infinite width) and the
closed-form predictors of a model trained by gradient descent on a kernel's linearisation.

Conventions used everywhere in the ``ntk`` task:

* A model is a function ``f(params, x) -> (N, K)`` of a tuple of parameter tensors (the
  task's families split one flat vector ``theta`` into it).
* The empirical NTK of ``f`` at ``theta`` is ``Theta = J(x1) J(x2)^T`` with ``J(x)`` the
  (N*K, P) Jacobian; rows and columns are indexed ``point * K + output``.
* The loss is ``L = 1/2 * mean over points and outputs of (f - y)^2`` (divisor N*K), so
  gradient descent with step ``lr`` on the linearised model moves the training residual
  by ``r <- (I - lr * Theta / (N*K)) r`` and gradient flow for time ``t`` by
  ``exp(-t * Theta / (N*K)) r``.
* Analytic MLP kernels use the NTK parameterisation of Jacot et al. 2018 / Arora et al.
  2019: ``h^1 = sigma_w W^1 x / sqrt(d) + sigma_b b^1``, ``h^{l+1} = sigma_w W^{l+1}
  phi(h^l) / sqrt(n) + sigma_b b^{l+1}`` with all W, b ~ N(0, 1); ``depth`` counts hidden
  layers; the output layer is ``h^{depth+1}``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.func import jacrev, jvp, vjp, vmap

Model = Callable[[tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]
Params = tuple[torch.Tensor, ...]

#: Default memory budget of one Jacobian chunk pair (bytes).
DEFAULT_MEMORY = 2**28


# --------------------------------------------------------------------------- empirical


def _as_params(params: torch.Tensor | Params) -> Params:
    return (params,) if isinstance(params, torch.Tensor) else tuple(params)


def _jacobian(f: Model, params: Params, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-parameter Jacobians of ``f(params, x)``, each (len(x) * K, numel)."""
    try:
        # One reverse pass per (sample, output), each through its own sample only; the
        # Jacobian is taken per parameter tensor (a flat vector sliced inside the traced
        # function would scatter every row into a zero-filled full-size vector).
        def one(xi: torch.Tensor) -> Params:
            return jacrev(lambda *ps: f(ps, xi[None])[0], argnums=tuple(range(len(params))))(
                *params
            )

        jac = vmap(one)(x)
    except (RuntimeError, ValueError, NotImplementedError):
        # a module vmap cannot batch: the whole-batch Jacobian (slower, same numbers)
        jac = jacrev(lambda *ps: f(ps, x), argnums=tuple(range(len(params))))(*params)
    k = jac[0].shape[1]
    return [j.reshape(len(x) * k, -1) for j in jac]


def _jacobian_loop(f: Model, params: Params, x: torch.Tensor) -> list[torch.Tensor]:
    """:func:`_jacobian` by one plain reverse pass per sample (its K outputs batched), without
    torch.func: the first torch.func transform imports torch._dynamo (~1.4 CPU s), which
    costs a short-lived process more than the loop does at quick-profile sizes."""
    ps = [p.detach().requires_grad_(True) for p in params]
    rows: list[list[torch.Tensor]] = [[] for _ in ps]
    with torch.enable_grad():
        for i in range(len(x)):
            out = f(tuple(ps), x[i : i + 1])[0]
            k = out.shape[0]
            if k == 1:
                grads = torch.autograd.grad(out[0], ps, allow_unused=True)
            else:
                eye = torch.eye(k, dtype=out.dtype, device=out.device)
                grads = torch.autograd.grad(out, ps, eye, is_grads_batched=True, allow_unused=True)
            for r, g, p in zip(rows, grads, ps, strict=True):
                r.append(
                    torch.zeros(k, p.numel(), dtype=p.dtype) if g is None else g.reshape(k, -1)
                )
    return [torch.cat(r) for r in rows]


def _contract(j1: list[torch.Tensor], j2: list[torch.Tensor]) -> torch.Tensor:
    out = j1[0] @ j2[0].T
    for a, b in zip(j1[1:], j2[1:], strict=True):
        out += a @ b.T
    return out


def _rows(n_points: int, row_bytes: int, memory: int) -> int:
    """Points per chunk so that two chunks of ``row_bytes`` per point fit in ``memory``."""
    return max(1, min(n_points, memory // max(1, 2 * row_bytes)))


def _n_out(f: Model, params: Params, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(f(params, x[:1]).shape[-1])


def ntk_jacobian(
    f: Model,
    params: torch.Tensor | Params,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    memory: int = DEFAULT_MEMORY,
    loop: bool = False,
) -> torch.Tensor:
    """Empirical NTK (N1*K, N2*K) by Jacobian contraction, chunked over points.

    Per-sample Jacobians by ``vmap(jacrev)``, or (``loop=True``) by a plain autograd pass
    per sample (:func:`_jacobian_loop`: no torch.func import; same numbers).

    ``x2=None`` means ``x1`` (the symmetric case: each chunk's Jacobian is reused and only
    the upper block triangle is contracted). Memory stays within about ``memory`` bytes of
    Jacobians: all of x2's rows are kept when they fit with at least one row of x1, else
    both are chunked and chunks that do not fit together are recomputed (the
    recomputation costs ~1/(chunk*K) of the contraction).
    """
    params = _as_params(params)
    jacobian = _jacobian_loop if loop else _jacobian
    k = _n_out(f, params, x1)
    p = sum(t.numel() for t in params)
    return _chunk_plan(
        lambda x: jacobian(f, params, x), _contract, x1, x2, k,
        k * p * params[0].element_size(), memory,
    )  # fmt: skip


def _chunk_plan(
    features: Callable[[torch.Tensor], object],
    contract: Callable[[object, object], torch.Tensor],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    k: int,
    row_bytes: int,
    memory: int,
) -> torch.Tensor:
    """The (N1*K, N2*K) kernel ``contract(features(x1 chunk), features(x2 chunk))`` blockwise,
    holding about ``memory`` bytes of features (``row_bytes`` per point); see
    :func:`ntk_jacobian` for the plan (shared with the layer-wise closed form)."""
    sym = x2 is None
    x2 = x1 if sym else x2
    rows = rows1 = _rows(max(len(x1), len(x2)), row_bytes, memory)
    if sym and len(x1) * row_bytes <= memory:
        rows = rows1 = len(x1)  # one Jacobian, contracted with itself
    elif not sym and rows < len(x2) and (len(x2) + 1) * row_bytes <= memory:
        # x2's whole Jacobian fits with room for some x1 rows: keep it, chunk x1 only
        rows, rows1 = len(x2), min(len(x1), (memory - len(x2) * row_bytes) // row_bytes)
    out = None
    chunks1 = [(i, min(i + rows1, len(x1))) for i in range(0, len(x1), rows1)]
    chunks2 = [(j, min(j + rows, len(x2))) for j in range(0, len(x2), rows)]
    cache2 = None
    if len(chunks2) == 1 and not (sym and len(chunks1) == 1):
        cache2 = features(x2)
    for a, b in chunks1:
        j1 = features(x1[a:b])
        for c, d in chunks2:
            if sym and c < a:
                continue
            if sym and c == a:
                j2 = j1
            elif cache2 is not None:
                j2 = cache2
            else:
                j2 = features(x2[c:d])
            block = contract(j1, j2)
            if out is None:
                out = torch.empty(len(x1) * k, len(x2) * k, dtype=block.dtype, device=block.device)
            out[a * k : b * k, c * k : d * k] = block
            if sym and c > a:
                out[c * k : d * k, a * k : b * k] = block.T
    return out


def ntk_vector_products(
    f: Model,
    params: torch.Tensor | Params,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    memory: int = DEFAULT_MEMORY,
) -> torch.Tensor:
    """Empirical NTK (N1*K, N2*K) by NTK-vector products: column block ``J1 (J2^T E)``.

    Each column is one VJP on ``x2`` and one JVP on ``x1`` (Novak et al. 2022, "Fast
    finite width neural tangent kernel"); columns are batched by vmap in chunks holding
    at most about ``memory`` bytes of parameter-sized vectors.
    """
    params = _as_params(params)
    x2 = x1 if x2 is None else x2
    out2, pullback = vjp(lambda *ps: f(ps, x2), *params)
    n2, k = out2.shape
    cols = n2 * k
    p = sum(t.numel() for t in params)
    step = max(1, min(cols, memory // max(1, p * params[0].element_size())))
    eye = torch.eye(cols, dtype=params[0].dtype, device=params[0].device)
    blocks = []
    with warnings.catch_warnings():
        # torch's forward-mode AD imports a torch.jit.script'ed helper that warns on import
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        for s in range(0, cols, step):
            cot = eye[s : s + step].reshape(-1, n2, k)
            tangents = vmap(pullback)(cot)
            pushed = vmap(lambda *v: jvp(lambda *ps: f(ps, x1), params, v)[1])(*tangents)
            blocks.append(pushed.reshape(len(cot), -1).T)
    return torch.cat(blocks, dim=1)


def empirical_ntk(
    f: Model,
    params: torch.Tensor | Params,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    impl: str = "auto",
    memory: int = DEFAULT_MEMORY,
) -> torch.Tensor:
    """Empirical NTK (N1*K, N2*K) of ``f(params, x)`` at ``params`` (a tensor or a tuple).

    ``impl``: jacobian, jacobian-loop (per-sample autograd instead of vmap(jacrev); no
    torch.func), ntvp, auto or auto-loop. auto picks by flop count: the contraction costs
    ~N1*N2*K^2*P, the NTK-vector products ~3*N2*K*(N1+N2)*P, so products win only for
    many outputs; auto-loop is auto with jacobian-loop in place of jacobian.
    """
    if impl in ("auto", "auto-loop"):
        params = _as_params(params)
        n1, n2 = len(x1), len(x1 if x2 is None else x2)
        k = _n_out(f, params, x1)
        contraction = "jacobian-loop" if impl == "auto-loop" else "jacobian"
        impl = "ntvp" if n1 * n2 * k * k > 3 * n2 * k * (n1 + n2) else contraction
    if impl in ("jacobian", "jacobian-loop"):
        return ntk_jacobian(f, params, x1, x2, memory, loop=impl == "jacobian-loop")
    if impl == "ntvp":
        return ntk_vector_products(f, params, x1, x2, memory)
    raise ValueError(
        f"unknown NTK implementation {impl!r}; use jacobian, jacobian-loop, ntvp, auto or auto-loop"
    )


# --------------------------------------------------------------------------- analytic


def _relu_expectations(s11, s22, s12):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for centred Gaussians (arc-cosine kernels)."""
    norm = np.sqrt(s11 * s22)
    cos = np.clip(s12 / np.maximum(norm, 1e-300), -1.0, 1.0)
    gamma = np.arccos(cos)
    e = norm * (np.sin(gamma) + (np.pi - gamma) * cos) / (2 * np.pi)
    ed = (np.pi - gamma) / (2 * np.pi)
    return e, ed


def _erf_expectations(s11, s22, s12):
    """E[erf(u) erf(v)] and E[erf'(u) erf'(v)] for centred Gaussians (Williams 1997)."""
    a, b = 1 + 2 * s11, 1 + 2 * s22
    e = (2 / np.pi) * np.arcsin(np.clip(2 * s12 / np.sqrt(a * b), -1.0, 1.0))
    ed = (4 / np.pi) / np.sqrt(np.maximum(a * b - 4 * s12**2, 1e-300))
    return e, ed


_ACTIVATIONS = {"relu": _relu_expectations, "erf": _erf_expectations}


def mlp_kernels(
    x1: np.ndarray,
    x2: np.ndarray,
    depth: int,
    activation: str = "relu",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(NNGP, NTK), each (N1, N2), of an infinite-width MLP with ``depth`` hidden layers.

    Recursion (Jacot et al. 2018; Arora et al. 2019, eq. 7): Sigma^1 = sigma_w^2 x.x'/d +
    sigma_b^2, Sigma^{l+1} = sigma_w^2 E[phi(u) phi(v)] + sigma_b^2, dSigma^{l+1} =
    sigma_w^2 E[phi'(u) phi'(v)], Theta^1 = Sigma^1, Theta^{l+1} = Theta^l dSigma^{l+1} +
    Sigma^{l+1}; returns (Sigma^{depth+1}, Theta^{depth+1}) of the scalar output (the
    kernel of each of K outputs; outputs are independent).
    """
    expect = _ACTIVATIONS[activation]
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    x1, x2 = x1.reshape(len(x1), -1), x2.reshape(len(x2), -1)
    d = x1.shape[1]
    w2, b2 = sigma_w**2, sigma_b**2
    s12 = w2 * (x1 @ x2.T) / d + b2
    s11 = w2 * np.sum(x1 * x1, 1) / d + b2
    s22 = w2 * np.sum(x2 * x2, 1) / d + b2
    theta = s12.copy()
    for _ in range(depth):
        e, ed = expect(s11[:, None], s22[None, :], s12)
        e11, _ = expect(s11, s11, s11)
        e22, _ = expect(s22, s22, s22)
        s12, s11, s22 = w2 * e + b2, w2 * e11 + b2, w2 * e22 + b2
        theta = theta * (w2 * ed) + s12
    return s12, theta


def cntk_gap(
    x1: np.ndarray, x2: np.ndarray, sigma_w: float = 1.0, kernel_size: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(NNGP, NTK) of an infinite-channel one-hidden-conv-layer ReLU CNN with global average
    pooling (Arora et al. 2019's CNTK-GAP, one layer), inputs (N, C, H, W), zero padding.

    The net: h_c(p) = sigma_w <W_c, patch_p(x)> / sqrt(C k^2), f = sigma_w / sqrt(n) *
    sum_c v_c * mean_p relu(h_c(p)), all weights N(0, 1), no biases.
    """

    def patches(x: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(x, np.float64))
        cols = torch.nn.functional.unfold(t, kernel_size, padding=kernel_size // 2)
        return cols.transpose(1, 2).numpy()  # (N, positions, C*k*k)

    p1, p2 = patches(x1), patches(x2)
    n1, npos1, fan = p1.shape
    n2, npos2, _ = p2.shape
    w2 = sigma_w**2
    s11 = w2 * np.einsum("apc,apc->ap", p1, p1) / fan
    s22 = w2 * np.einsum("bqc,bqc->bq", p2, p2) / fan
    flat2 = p2.reshape(n2 * npos2, fan).T * (w2 / fan)
    nngp = np.empty((n1, n2))
    ntk = np.empty((n1, n2))
    # The arc-cosine expectations in closed form without sin(arccos):
    # E[relu(u) relu(v)] = (sqrt(s11 s22 - s12^2) + (pi - gamma) s12) / (2 pi) and
    # E[relu'(u) relu'(v)] = (pi - gamma) / (2 pi), gamma = arccos(s12 / sqrt(s11 s22)).
    # A few rows at a time (one GEMM each): the (rows, P, N2, Q) temporaries stay small.
    rows = max(1, 2**22 // max(1, n2 * npos1 * npos2))
    for a in range(0, n1, rows):
        b = min(a + rows, n1)
        s12 = (p1[a:b].reshape(-1, fan) @ flat2).reshape(b - a, npos1, n2, npos2)
        n11 = s11[a:b, :, None, None] * s22[None, None, :, :]
        n11 = np.sqrt(n11, out=n11)  # sqrt(s11 s22)
        cos = np.clip(s12 / np.maximum(n11, 1e-300), -1.0, 1.0)
        angle = np.pi - np.arccos(cos, out=cos)  # pi - gamma
        sine = np.sqrt(np.maximum(n11 * n11 - s12 * s12, 0.0, out=n11), out=n11)
        t = np.multiply(angle, s12, out=angle)
        t_mean = t.mean(axis=(1, 3)) / (2 * np.pi)
        nngp[a:b] = w2 * (sine.mean(axis=(1, 3)) / (2 * np.pi) + t_mean)
        ntk[a:b] = nngp[a:b] + w2 * t_mean
    return nngp, ntk


#: Analytic kernels a method may declare: name -> (required hyper-parameters, function).
CATALOGUE: dict[str, tuple[tuple[str, ...], Callable]] = {
    "relu_ntk": (("depth", "sigma_w", "sigma_b"), lambda x1, x2, depth, sigma_w, sigma_b:
                 mlp_kernels(x1, x2, int(depth), "relu", sigma_w, sigma_b)),
    "erf_ntk": (("depth", "sigma_w", "sigma_b"), lambda x1, x2, depth, sigma_w, sigma_b:
                mlp_kernels(x1, x2, int(depth), "erf", sigma_w, sigma_b)),
    "relu_cntk_gap": (("sigma_w", "kernel_size"), lambda x1, x2, sigma_w, kernel_size:
                      cntk_gap(x1, x2, sigma_w, int(kernel_size))),
}  # fmt: skip


def check_spec(spec: object) -> dict:
    """A catalogue kernel spec ``{"name": ..., **hyper-parameters}``, validated (a copy).

    Raises ValueError for an unknown name, a missing or extra hyper-parameter or one that
    is not a finite number in [0, 1000].
    """
    if not isinstance(spec, dict) or spec.get("name") not in CATALOGUE:
        raise ValueError(f"unknown analytic kernel; the catalogue has {sorted(CATALOGUE)}")
    names, _ = CATALOGUE[spec["name"]]
    given = {k: v for k, v in spec.items() if k != "name"}
    if set(given) != set(names):
        raise ValueError(f"kernel {spec['name']!r} takes exactly {names}, got {sorted(given)}")
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"kernel hyper-parameter {k} must be a finite number")
        if v < 0 or v > 1e3:
            raise ValueError(f"kernel hyper-parameter {k} is outside [0, 1000]")
    return dict(spec)


def analytic_ntk(spec: dict, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The NTK (N1, N2) of a catalogue kernel spec (validated by :func:`check_spec`)."""
    spec = check_spec(spec)
    given = {k: v for k, v in spec.items() if k != "name"}
    return CATALOGUE[spec["name"]][1](x1, x2, **given)[1]


# --------------------------------------------------------------------------- training closed forms


def kernel_predictor(
    k_train: torch.Tensor,
    k_test_train: torch.Tensor,
    f0_train: torch.Tensor,
    f0_test: torch.Tensor,
    y_train: torch.Tensor,
    lr: float,
    steps: int | float,
    discrete: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) outputs of the kernel-linearised model after training from ``f0``.

    ``k_train`` (N*K, N*K) and ``k_test_train`` (M*K, N*K) are kernels in the row order
    point * K + output; ``f0_*``, ``y_train`` are (N, K). Loss 1/2 * mean of squares
    (divisor N*K). ``discrete``: ``steps`` steps of gradient descent with step ``lr``
    (exact for a model linear in its parameters); else gradient flow for time
    ``lr * steps``. ``steps=inf`` with flow is kernel regression on the train set.
    """
    n, k = y_train.shape
    scale = n * k
    evals, evecs = torch.linalg.eigh((k_train + k_train.T) / 2)
    evals = evals.clamp_min(0.0)
    lam = evals / scale
    if discrete:
        decay = (1 - lr * lam) ** steps
        limit = lr * steps / scale
    else:
        decay = torch.exp(-lr * steps * lam) if math.isfinite(steps) else torch.zeros_like(lam)
        limit = lr * steps / scale if math.isfinite(steps) else float("inf")
    tiny = evals <= evals.max() * 1e-12 * len(evals)
    # g(lambda) = (1 - decay) / lambda, with its lambda -> 0 limit where lambda vanishes.
    g = torch.where(tiny, torch.full_like(evals, limit), (1 - decay) / torch.where(tiny, 1, evals))
    if not math.isfinite(limit):
        g = torch.where(tiny, torch.zeros_like(g), g)  # pseudo-inverse on the null space
    resid = (y_train - f0_train).reshape(-1)
    coef = evecs @ (g * (evecs.T @ resid))
    train = f0_train.reshape(-1) + k_train @ coef
    test = f0_test.reshape(-1) + k_test_train @ coef
    return train.reshape(n, k), test.reshape(-1, k)


def loglog_slope(widths: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width) (NaN if under 2 usable points)."""
    w = np.asarray(widths, float)
    v = np.asarray(values, float)
    ok = np.isfinite(v) & (v > 0) & (w > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(w[ok]), np.log(v[ok]), 1)[0])
