"""faceid's LFW and CASIA-WebFace loaders on a tiny fake tree in the documented layouts.

No real data is available here (nothing is downloaded), so the loaders are checked on a
scaled-down copy of the layouts the docs name: ``lfw_home/`` as scikit-learn's
``fetch_lfw_pairs``/``fetch_lfw_people`` read it (pairs.txt with 10 folds, the two
pairsDev*.txt files, ``lfw_funneled/<Name>/<Name>_0001.jpg``) and
``casia-webface/<identity>/*.jpg``. Only the pair count is scaled (20 instead of 6000).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dltbench.tasks.faceid import data as faceid_data

FOLDS = faceid_data.N_FOLDS


def _jpg(path, rng, side=250) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # RGB, as LFW's JPEGs are (scikit-learn averages the channels for grey)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    """Per fold one matched pair (person Mf, 2 images) and one mismatched pair (Af vs Bf);
    three people outside every pair (T0..T2, 2-3 images) to train on."""
    root = tmp_path_factory.mktemp("faces")
    home = root / "lfw_home"
    funneled = home / "lfw_funneled"
    rng = np.random.default_rng(0)
    lines = [f"{FOLDS}\t1"]
    for f in range(FOLDS):
        lines += [f"M{f}\t1\t2", f"A{f}\t1\tB{f}\t1"]
        for name, n in ((f"M{f}", 2), (f"A{f}", 1), (f"B{f}", 1)):
            for k in range(1, n + 1):
                _jpg(funneled / name / f"{name}_{k:04d}.jpg", rng)
    for t, n in enumerate((2, 3, 2)):
        for k in range(1, n + 1):
            _jpg(funneled / f"T{t}" / f"T{t}_{k:04d}.jpg", rng)
    (home / "pairs.txt").write_text("\n".join(lines) + "\n")
    for dev in ("pairsDevTrain.txt", "pairsDevTest.txt"):
        (home / dev).write_text("1\n")
    for ident, n in (("0000045", 3), ("0000099", 2), ("M0", 2)):  # M0 is an LFW pair identity
        for k in range(n):
            _jpg(root / "casia-webface" / ident / f"{k:03d}.jpg", rng, side=40)
    return root


@pytest.fixture
def scaled(monkeypatch):
    monkeypatch.setattr(faceid_data, "LFW_PAIRS", 2 * FOLDS)


def test_lfw_loader_reads_the_documented_layout(fake_tree, scaled):
    d = faceid_data.load_lfw(fake_tree)
    assert len(d.pairs) == 2 * FOLDS and d.test_x.shape[0] == 4 * FOLDS
    # pairs.txt order: per fold its matched pair, then its mismatched pair; folds contiguous
    assert d.pairs.same.tolist() == [True, False] * FOLDS
    assert d.pairs.fold.tolist() == np.repeat(np.arange(FOLDS), 2).tolist()
    assert d.test_ids[:4] == ("M0", "M0", "A0", "B0")
    # training people: only those in no pair, with at least two images
    assert d.train_ids == ("T0", "T1", "T2") and len(d.train_x) == 7
    assert not set(d.train_ids) & set(d.test_ids)
    assert d.train_x.dtype.is_floating_point and float(d.train_x.min()) >= 0
    assert float(d.train_x.max()) <= 1 and d.train_x.shape[1] == 1
    assert d.train_x.shape[2:] == d.test_x.shape[2:]


def test_lfw_loader_refuses_a_pairs_file_of_the_wrong_size(fake_tree):
    with pytest.raises(faceid_data.DataMissing, match="LFW View 2 has 6000"):
        faceid_data.load_lfw(fake_tree)


def test_casia_loader_drops_lfw_pair_identities(fake_tree, scaled):
    d = faceid_data.load_casia_lfw(fake_tree, side=16)
    assert d.train_ids == ("0000045", "0000099") and len(d.train_x) == 5
    assert d.train_y.tolist() == [0, 0, 0, 1, 1]
    assert tuple(d.train_x.shape[1:]) == (3, 16, 16) == tuple(d.test_x.shape[1:])
    assert len(d.pairs) == 2 * FOLDS and d.test_x.shape[0] == 4 * FOLDS
    assert float(d.test_x.min()) >= 0 and float(d.test_x.max()) <= 1
