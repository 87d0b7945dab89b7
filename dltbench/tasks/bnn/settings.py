"""The task's settings: which data, which network and which prior make up each posterior."""

from __future__ import annotations

from dataclasses import dataclass

from .network import MLP


@dataclass(frozen=True)
class Setting:
    """A dataset with its network and prior; the posterior the methods approximate."""

    dataset: str
    sizes: tuple[int, ...]
    prior_sd: float
    n_train: int = 0  # 0: the whole train split
    n_test: int = 0  # 0: the whole test split

    @property
    def net(self) -> MLP:
        """The harness's network."""
        return MLP(self.sizes)


SETTINGS: dict[str, Setting] = {
    "moons-gap": Setting("moons-gap", (2, 50, 50, 2), 1.0),
    "digits": Setting("digits", (64, 32, 10), 1.0),
    "mnist": Setting("mnist", (784, 100, 10), 1.0),
    "cifar10": Setting("cifar10", (3072, 200, 200, 10), 1.0),
}
