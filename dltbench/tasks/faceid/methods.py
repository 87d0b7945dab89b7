"""Built-in ``faceid`` methods, registered exactly as a third-party plugin would be.

All train the profile's shared backbone (:func:`nets.backbone`) with Adam and a cosine
learning-rate schedule for ``config.epochs`` passes over the training images; they
differ only in the loss. Classification losses return the network with its classifier
rows (:class:`nets.WithClassifier`); pair losses return the network alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...api import Context
from ...registry import register_method
from . import losses
from .data import TrainView
from .nets import WithClassifier, backbone
from .task import FaceIDConfig, FaceIDMethod


def _batches(
    data: TrainView, batch_size: int, pk: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of index batches: shuffled (pk = 0), or P identities x pk images each."""
    n = len(data.y)
    if pk == 0:
        order = torch.randperm(n, generator=gen)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    by_id = [torch.nonzero(data.y == c)[:, 0] for c in range(data.num_identities)]
    p = max(2, batch_size // pk)
    out = []
    for _ in range(max(1, n // (p * pk))):
        ids = torch.randperm(data.num_identities, generator=gen)[:p]
        out.append(torch.cat([by_id[c][torch.randperm(len(by_id[c]), generator=gen)[:pk]]
                              for c in ids.tolist()]))  # fmt: skip
    return out


class _Trained(FaceIDMethod):
    """Shared training loop; subclasses define the head's parameters and the loss."""

    #: images per identity in a batch (0: plain shuffled batches)
    pk: int = 0

    def __init__(self, lr: float = 2e-3, weight_decay: float = 5e-4):
        self.lr = lr
        self.weight_decay = weight_decay

    def head(self, dim: int, num_classes: int, device: torch.device) -> nn.Module | None:
        """Trainable head parameters (e.g. the classifier rows), or None."""
        return None

    def loss(self, net: nn.Module, head, x, y, step: int, total: int) -> torch.Tensor:
        """The minibatch loss at optimisation ``step`` of ``total``."""
        raise NotImplementedError

    def classifier(self, head) -> torch.Tensor | None:
        """The classifier rows to expose (argmax_c <w_c, h> is the prediction), or None."""
        return None

    def train(self, data: TrainView, config: FaceIDConfig, ctx: Context) -> nn.Module:
        """Train the shared backbone on this method's loss."""
        dev = ctx.device
        net = backbone(data.shape, config.embedding_dim, config.arch).to(dev)
        head = self.head(config.embedding_dim, data.num_identities, dev)
        params = list(net.parameters()) + (list(head.parameters()) if head is not None else [])
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        per_epoch = len(
            _batches(data, config.batch_size, self.pk, torch.Generator().manual_seed(0))
        )
        total = max(1, config.epochs * per_epoch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        x_all, y_all = data.x.to(dev), data.y.to(dev)
        step = 0
        for epoch in range(config.epochs):
            net.train()
            for idx in _batches(data, config.batch_size, self.pk, ctx.generator):
                idx = idx.to(dev)
                loss = self.loss(net, head, x_all[idx], y_all[idx], step, total)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                self.after_step(net, head, x_all[idx], y_all[idx])
                step += 1
            ctx.progress("train", epoch + 1, config.epochs)
        net.eval()
        w = self.classifier(head)
        return net if w is None else WithClassifier(net, w).eval()

    def after_step(self, net, head, x, y) -> None:
        """Hook after each optimiser step (center loss moves its centres here)."""


class _Linear(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * (1.0 / math.sqrt(dim)))


@register_method(task="faceid", name="softmax")
class Softmax(_Trained):
    """Softmax cross-entropy on a bias-free linear classifier: the baseline."""

    version = "1"

    def head(self, dim, num_classes, device):
        """A bias-free linear classifier W (C, d)."""
        return _Linear(dim, num_classes).to(device)

    def loss(self, net, head, x, y, step, total):
        """CE(W h, y)."""
        return F.cross_entropy(net(x) @ head.weight.t(), y)

    def classifier(self, head):
        """W as is (the prediction is argmax W h)."""
        return head.weight


@register_method(task="faceid", name="center-loss")
class CenterLoss(Softmax):
    """Wen et al. 2016: CE + lam/2 mean ||h - c_y||^2, centres moved by the paper's rule (rate alpha)."""

    version = "1"

    def __init__(self, lam: float = 0.003, alpha: float = 0.5, lr: float = 2e-3,
                 weight_decay: float = 5e-4):  # fmt: skip
        super().__init__(lr, weight_decay)
        self.lam = lam
        self.alpha = alpha

    def head(self, dim, num_classes, device):
        """The classifier and the class centres (a buffer, not trained by the optimiser)."""
        h = _Linear(dim, num_classes).to(device)
        h.register_buffer("centers", torch.zeros(num_classes, dim, device=device))
        return h

    def loss(self, net, head, x, y, step, total):
        """CE(W h, y) + lam * (1/2) mean ||h - c_y||^2."""
        h = net(x)
        self._h = h.detach()
        ce = F.cross_entropy(h @ head.weight.t(), y)
        return ce + self.lam * losses.center_loss(h, y, head.centers)

    def after_step(self, net, head, x, y):
        """c_j -= alpha sum_{y_i = j} (c_j - h_i) / (1 + n_j)."""
        losses.update_centers(head.centers, self._h, y, self.alpha)


class _CosineHead(Softmax):
    """Normalised class rows: the exposed classifier is W / ||W|| (argmax cos)."""

    def classifier(self, head):
        """Unit rows."""
        return F.normalize(head.weight.detach(), dim=1)


@register_method(task="faceid", name="sphereface")
class SphereFace(_CosineHead):
    """Liu et al. 2017, A-Softmax: target ||h|| psi(theta), psi = (-1)^k cos(m theta) - 2k, m = 4.

    The target logit is annealed, (lam ||h|| cos + ||h|| psi) / (1 + lam) with
    lam = max(lambda_min, base (1 + gamma it)^-power), base 1000, power 1, lambda_min 5
    (the authors' released setting); gamma is fit to the budget so that lam reaches
    lambda_min after ``anneal_fraction`` of the iterations (their gamma = 0.12 reaches it
    after ~1700 of 28k iterations, a budget the quick profile does not have).
    """

    version = "1"

    def __init__(self, m: int = 4, base: float = 1000.0, lambda_min: float = 5.0,
                 anneal_fraction: float = 0.5, lr: float = 2e-3, weight_decay: float = 5e-4):  # fmt: skip
        super().__init__(lr, weight_decay)
        self.m, self.base, self.lambda_min = m, base, lambda_min
        self.anneal_fraction = anneal_fraction

    def loss(self, net, head, x, y, step, total):
        """CE of the annealed A-Softmax logits."""
        gamma = (self.base / self.lambda_min - 1.0) / max(1.0, self.anneal_fraction * total)
        lam = losses.sphereface_lambda(step, self.base, gamma, 1.0, self.lambda_min)
        return F.cross_entropy(losses.sphereface_logits(net(x), head.weight, y, self.m, lam), y)


@register_method(task="faceid", name="cosface")
class CosFace(_CosineHead):
    """Wang et al. 2018, LMCL: s (cos theta_y - m), m = 0.35; s = 16 for C ~ 300 identities.

    The paper's bound s >= (C-1)/C log((C-1) P / (1-P)) is ~8 for C = 300, P = 0.9; its
    s = 64 is for ~10k identities.
    """

    version = "1"

    def __init__(self, s: float = 16.0, m: float = 0.35, lr: float = 2e-3,
                 weight_decay: float = 5e-4):  # fmt: skip
        super().__init__(lr, weight_decay)
        self.s, self.m = s, m

    def loss(self, net, head, x, y, step, total):
        """CE of the CosFace logits."""
        cos = losses.cosine_table(net(x), head.weight)
        return F.cross_entropy(losses.cosface_logits(cos, y, self.s, self.m), y)


@register_method(task="faceid", name="arcface")
class ArcFace(_CosineHead):
    """Deng et al. 2019, additive angular margin: s cos(theta_y + m), m = 0.5, s = 16 here (64 in
    the paper, for ~85k identities), with insightface's fallback where theta + m > pi."""

    version = "1"

    def __init__(self, s: float = 16.0, m: float = 0.5, easy_margin: bool = False,
                 lr: float = 2e-3, weight_decay: float = 5e-4):  # fmt: skip
        super().__init__(lr, weight_decay)
        self.s, self.m, self.easy_margin = s, m, easy_margin

    def loss(self, net, head, x, y, step, total):
        """CE of the ArcFace logits."""
        cos = losses.cosine_table(net(x), head.weight)
        return F.cross_entropy(losses.arcface_logits(cos, y, self.s, self.m, self.easy_margin), y)


@register_method(task="faceid", name="contrastive")
class Contrastive(_Trained):
    """Hadsell et al. 2006 on unit embeddings, all pairs of P x 4 batches, margin 1.0.

    Label convention: s = 1 for a same-identity pair (loss s d^2), s = 0 otherwise
    (loss max(0, margin - d)^2), halved; d Euclidean, in [0, 2] for unit vectors.
    """

    version = "1"
    pk = 4

    def __init__(self, margin: float = 1.0, lr: float = 2e-3, weight_decay: float = 5e-4):
        super().__init__(lr, weight_decay)
        self.margin = margin

    def loss(self, net, head, x, y, step, total):
        """Mean contrastive loss over the batch's pairs."""
        return losses.contrastive_loss(F.normalize(net(x), dim=1), y, self.margin)


@register_method(task="faceid", name="triplet")
class Triplet(_Trained):
    """FaceNet (Schroff et al. 2015): triplet loss on unit embeddings, squared distances,
    alpha = 0.2, online semi-hard negatives within P x 4 batches."""

    version = "1"
    pk = 4

    def __init__(self, margin: float = 0.2, lr: float = 2e-3, weight_decay: float = 5e-4):
        super().__init__(lr, weight_decay)
        self.margin = margin

    def loss(self, net, head, x, y, step, total):
        """Mean semi-hard triplet loss over every anchor-positive pair of the batch."""
        return losses.triplet_semihard_loss(F.normalize(net(x), dim=1), y, self.margin)
