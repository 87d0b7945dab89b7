"""A point-by-point CERTIFY written as plainly as the paper's pseudocode (and the authors'
code's structure: one point at a time, noise batch by batch, counts by argmax), used as
the reference our batched implementation is compared with, statistically and in speed."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta, norm


def sample_counts(model, x, num, sigma, batch_size, num_classes, generator):
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = num
    with torch.no_grad():
        while remaining > 0:
            b = min(batch_size, remaining)
            remaining -= b
            batch = x.unsqueeze(0).repeat((b,) + (1,) * x.dim())
            noise = torch.randn(batch.shape, generator=generator, device=x.device) * sigma
            pred = model(batch + noise).argmax(1)
            counts += np.bincount(pred.cpu().numpy(), minlength=num_classes)
    return counts


def certify_reference(model, x, sigma, n0, n, alpha, batch_size, num_classes, generator):
    c_a = int(sample_counts(model, x, n0, sigma, batch_size, num_classes, generator).argmax())
    n_a = int(sample_counts(model, x, n, sigma, batch_size, num_classes, generator)[c_a])
    p_a = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0  # one-sided Clopper-Pearson
    if p_a < 0.5:
        return -1, 0.0
    return c_a, float(sigma * norm.ppf(p_a))
