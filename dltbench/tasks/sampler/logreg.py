"""Bayesian logistic regressions on small real datasets that ship with scikit-learn.

Their posterior moments are not known in closed form: the reference moments are stored in
``reference_moments.json`` with how they were made (``make_reference.py``), as posteriordb does.
"""

from __future__ import annotations

import json

import torch

from .targets import _REFERENCE_FILE, DTYPE, Target


class LogisticRegression(Target):
    """Bayesian logistic regression, prior N(0, prior_sd^2) on every coefficient (intercept too).

    Unnormalized posterior (``normalized = False``); its moments are the stored
    reference of ``reference_moments.json`` (see ``make_reference.py``).
    """

    capabilities = frozenset({"gradient", "minibatch"})
    normalized = False
    exact = False

    def __init__(
        self, name: str, x: torch.Tensor, y: torch.Tensor, prior_sd: float = 1.0, device="cpu"
    ):
        self.name, self.dim, self.n_data, self.prior_sd = name, x.shape[1], len(y), prior_sd
        super().__init__(device)
        self._x, self._y = x.to(self.device, DTYPE), y.to(self.device, DTYPE)
        ref = load_reference(name)
        nan = torch.full((self.dim,), float("nan"), dtype=DTYPE)
        self.reference = ref
        self.mean = torch.tensor(ref["mean"], dtype=DTYPE) if ref else nan
        self.var = torch.tensor(ref["var"], dtype=DTYPE) if ref else nan.clone()
        if ref:
            self.mean_se = torch.tensor(ref["mean_mcse"], dtype=DTYPE)
            self.var_se = torch.tensor(ref["var_mcse"], dtype=DTYPE)

    def _loglik_terms(self, beta, x, y):
        eta = beta @ x.T  # (n_chains, n_data)
        return y * eta - torch.nn.functional.softplus(eta), eta

    def _log_prob(self, beta):
        ll, _ = self._loglik_terms(beta, self._x, self._y)
        return ll.sum(1) - 0.5 * (beta**2).sum(1) / self.prior_sd**2

    def _grad(self, beta):
        eta = beta @ self._x.T
        return (self._y - torch.sigmoid(eta)) @ self._x - beta / self.prior_sd**2

    def _log_prob_and_grad(self, beta):
        eta = beta @ self._x.T
        ll = self._y * eta - torch.nn.functional.softplus(eta)
        lp = ll.sum(1) - 0.5 * (beta**2).sum(1) / self.prior_sd**2
        return lp, (self._y - torch.sigmoid(eta)) @ self._x - beta / self.prior_sd**2

    def _minibatch_grad(self, beta, idx):
        x, y = self._x[idx], self._y[idx]
        scale = self.n_data / len(idx)
        return scale * (y - torch.sigmoid(beta @ x.T)) @ x - beta / self.prior_sd**2


def iris_logistic(device="cpu") -> LogisticRegression:
    """Iris, versicolor (0) vs virginica (1): 4 z-scored features + intercept, prior N(0, 1)."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    keep = y > 0
    return _logistic("logreg-iris", x[keep], (y[keep] == 2).astype(float), device)


def cancer_logistic(device="cpu") -> LogisticRegression:
    """Breast cancer (malignant 0 / benign 1): 30 z-scored features + intercept, prior N(0, 1)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return _logistic("logreg-cancer", x, y.astype(float), device)


def _logistic(name, x, y, device) -> LogisticRegression:
    x = torch.as_tensor(x, dtype=DTYPE)
    x = (x - x.mean(0)) / x.std(0)
    x = torch.cat([torch.ones(len(x), 1, dtype=DTYPE), x], 1)
    return LogisticRegression(name, x, torch.as_tensor(y, dtype=DTYPE), 1.0, device)


def load_reference(name: str) -> dict | None:
    """The stored reference moments of target ``name`` (with how they were made), or None."""
    if not _REFERENCE_FILE.exists():
        return None
    return json.loads(_REFERENCE_FILE.read_text()).get("targets", {}).get(name)
