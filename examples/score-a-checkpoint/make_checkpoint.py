"""Train dltbench's reference digits classifier and save its weights as model.pt beside this file.

A stand-in for a checkpoint from elsewhere (a model zoo, another codebase): anything whose
state_dict fits ``dltbench.models.default_classifier`` for the dataset's image shape.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from dltbench.api import Context
from dltbench.data import load
from dltbench.models import default_classifier, fit_classifier


def main(epochs: int = 10, seed: int = 0) -> Path:
    """Train on the digits training split for ``epochs`` passes; return the saved path."""
    data = load("digits")
    model = default_classifier(data.shape, data.num_classes)

    def loss(model, x, y, gen):
        return F.cross_entropy(model(x), y)

    fit_classifier(model, data.train, loss, Context(seed, torch.device("cpu")), epochs)
    out = Path(__file__).with_name("model.pt")
    torch.save(model.state_dict(), out)
    return out


if __name__ == "__main__":
    print(main())
