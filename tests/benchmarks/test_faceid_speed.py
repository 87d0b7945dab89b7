"""The faceid evaluator's speed vs its peers on the same LFW-sized scores (6000 pairs).

Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_faceid_speed.py
Groups: the 10-fold accuracy (ours, vectorised over the threshold grid, vs insightface's
per-threshold loop as written in the reference test) and the pooled ROC (ours vs
``sklearn.metrics.roc_curve`` + ``roc_auc_score``). pytest-benchmark prints the ratio.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from dltbench.tasks.faceid.verification import auc, roc, ten_fold_accuracy
from tests.reference.test_faceid_closed_form import insightface_accuracy

pytestmark = pytest.mark.benchmark


def lfw_like():
    rng = np.random.default_rng(0)
    same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    cos = np.clip(rng.normal(np.where(same, 0.6, 0.1), 0.2), -1, 1)
    return cos, same


def test_ten_fold_ours(benchmark):
    cos, same = lfw_like()
    benchmark.group = "10-fold accuracy, 6000 pairs"
    res = benchmark(lambda: ten_fold_accuracy(cos, same))
    assert np.allclose(res.accuracy, insightface_accuracy(2 - 2 * cos, same))


def test_ten_fold_insightface_loop(benchmark):
    cos, same = lfw_like()
    benchmark.group = "10-fold accuracy, 6000 pairs"
    benchmark(lambda: insightface_accuracy(2 - 2 * cos, same))


def test_roc_ours(benchmark):
    cos, same = lfw_like()
    benchmark.group = "ROC + AUC, 6000 pairs"
    assert benchmark(lambda: auc(roc(cos, same))) == pytest.approx(roc_auc_score(same, cos))


def test_roc_sklearn(benchmark):
    cos, same = lfw_like()
    benchmark.group = "ROC + AUC, 6000 pairs"
    benchmark(lambda: (roc_curve(same, cos), roc_auc_score(same, cos)))
