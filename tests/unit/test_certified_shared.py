"""Shared base classifiers of the certified task: what a method may see, and the cache key."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dltbench import registry
from dltbench.api import Context
from dltbench.data import load
from dltbench.tasks.certified import CertifiedTask, shared
from dltbench.tasks.certified.methods import GaussianAugmentation


@pytest.fixture(scope="module")
def configs():
    registry.discover("certified")
    return {(c.noise, c.sigma, c.norm): c for c in CertifiedTask().configs("quick")}


def test_built_ins_declare_what_their_training_reads_and_plugins_are_never_shared():
    registry.discover("certified")
    assert shared.declared_fields("certified", "standard") == ()
    assert shared.declared_fields("certified", "lipschitz-margin") == ()
    assert shared.declared_fields("certified", "gaussian-aug") == ("noise", "sigma")
    assert shared.declared_fields("certified", "consistency") == ("noise", "sigma")
    assert shared.declared_fields("certified", "no-such-method") is None


def test_the_training_config_hides_every_undeclared_field(configs):
    l2, linf = configs[("gaussian", 0.25, "l2")], configs[("gaussian", 0.25, "linf")]
    seen = shared.training_config(l2, ("noise", "sigma"))
    assert (seen.noise, seen.sigma, seen.epochs, seen.dataset) == ("gaussian", 0.25, 30, "digits")
    assert seen.norm is None and seen.n is None and seen.resolutions is None
    # The l2 and l-inf rows of one sigma train the same model; another sigma does not.
    assert seen == shared.training_config(linf, ("noise", "sigma"))
    assert seen != shared.training_config(configs[("gaussian", 0.5, "l2")], ("noise", "sigma"))
    # A method that declares nothing gets one training config for every row.
    assert len({shared.training_config(c, ()) for c in configs.values()}) == 1


def test_a_method_that_reads_a_hidden_field_fails_instead_of_sharing_a_wrong_model(configs):
    config = CertifiedTask().smoke(configs[("gaussian", 0.25, "l2")])
    data = dataclasses.replace(load("digits"), test=None)
    with pytest.raises(ValueError, match="unknown noise"):
        GaussianAugmentation().train(
            data, shared.training_config(config, ()), Context(0, torch.device("cpu"))
        )


def test_the_key_changes_with_everything_the_weights_depend_on(configs):
    data = load("digits")
    ident = {"method": "standard", "method_version": "1", "method_source_hash": "abc",
             "method_params": {"lr": 0.001}}  # fmt: skip
    cfg = shared.training_config(configs[("gaussian", 0.25, "l2")], ())
    key = shared.training_key(ident, 7, cfg, data.train, "cpu")
    assert key == shared.training_key(ident, 7, cfg, data.train, "cpu")
    assert key != shared.training_key(ident, 8, cfg, data.train, "cpu")
    assert key != shared.training_key({**ident, "method_params": {"lr": 0.01}}, 7, cfg,
                                      data.train, "cpu")  # fmt: skip
    assert key != shared.training_key(ident, 7, dataclasses.replace(cfg, epochs=2), data.train,
                                      "cpu")  # fmt: skip
    other = dataclasses.replace(data.train, x=data.train.x.flip(0))
    assert key != shared.training_key(ident, 7, cfg, other, "cpu")


def test_an_unwritable_cache_locks_nothing_and_the_work_goes_on(tmp_path):
    """A cache folder that cannot be made (here: under a file) must cost time, not the cell."""
    from dltbench.cache import locked, write_atomic

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "certified-models" / "entry.pt"
    ran = []
    with locked(path):
        ran.append(True)
    assert ran == [True]
    with pytest.raises(OSError):  # the store that follows fails, and its callers suppress it
        write_atomic(path, b"x")
    good = tmp_path / "cache" / "entry.pt"
    with locked(good):
        assert good.with_suffix(".lock").exists()  # a writable cache is locked as before
