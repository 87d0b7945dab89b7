"""A third-party `certified` method: Gaussian augmentation with label smoothing.

Run it without installing:
    dltbench run --task certified --plugin examples/certified-label-smoothing/dltbench_label_smoothing.py \
        --method label-smoothing
Check it:
    dltbench validate --task certified --plugin examples/certified-label-smoothing/dltbench_label_smoothing.py
Install it (its pyproject.toml declares the `dltbench.methods` entry point), then it is
listed by `dltbench list` and runs with `--method label-smoothing` from anywhere:
    pip install ./examples/certified-label-smoothing
"""

import torch
import torch.nn.functional as F

import dltbench
from dltbench.models import default_classifier, fit_classifier
from dltbench.tasks.certified import CertifiedMethod


@dltbench.register_method(task="certified", name="label-smoothing")
class LabelSmoothing(CertifiedMethod):
    """Gaussian augmentation at the smoothing sigma with label-smoothed cross-entropy."""

    version = "1"

    def __init__(self, smoothing: float = 0.1, lr: float = 1e-3):
        self.smoothing = smoothing
        self.lr = lr

    def train(self, data, config, ctx):
        def loss(model, x, y, gen):
            noise = torch.randn(x.shape, generator=gen, device=x.device)
            return F.cross_entropy(
                model(x + config.sigma * noise), y, label_smoothing=self.smoothing
            )

        model = default_classifier(data.shape, data.num_classes)
        return fit_classifier(model, data.train, loss, ctx, epochs=config.epochs, lr=self.lr)
