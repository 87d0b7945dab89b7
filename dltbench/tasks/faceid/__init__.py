"""``faceid``: open-set face verification on held-out identities, neural collapse and attacks.

Library use, no CLI needed::

    from dltbench.tasks.faceid import ten_fold_accuracy, roc, auc, eer, tar_at_far
    folds = ten_fold_accuracy(cosine_scores, same, fold_labels)
    print(folds.mean, folds.stderr, auc(roc(cosine_scores, same)))
"""

from . import methods  # noqa: F401  (registers the built-in methods)
from .attacks import attack_pairs, check_adversarial, eyeglass_mask, pgd_similarity
from .data import FaceData, Pairs, SyntheticSpec, TrainView, make_synthetic
from .losses import (
    arcface_logits,
    arcface_target,
    contrastive_loss,
    cosface_logits,
    sphereface_logits,
    sphereface_psi,
    triplet_semihard_loss,
)
from .neural_collapse import nc1, neural_collapse
from .task import FaceIDConfig, FaceIDMethod, FaceIDTask
from .verification import auc, eer, roc, tar_at_far, ten_fold_accuracy

__all__ = [
    "FaceData",
    "FaceIDConfig",
    "FaceIDMethod",
    "FaceIDTask",
    "Pairs",
    "SyntheticSpec",
    "TrainView",
    "arcface_logits",
    "arcface_target",
    "attack_pairs",
    "auc",
    "check_adversarial",
    "contrastive_loss",
    "cosface_logits",
    "eer",
    "eyeglass_mask",
    "make_synthetic",
    "nc1",
    "neural_collapse",
    "pgd_similarity",
    "roc",
    "sphereface_logits",
    "sphereface_psi",
    "tar_at_far",
    "ten_fold_accuracy",
    "triplet_semihard_loss",
]
