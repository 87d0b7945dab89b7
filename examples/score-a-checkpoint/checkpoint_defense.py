"""Score an existing checkpoint as a `robust` defense, without retraining (RobustBench's habit).

The method below ignores the training split: it rebuilds dltbench's reference architecture
for the dataset and loads weights from ``model.pt`` next to this file. Plugin code runs in a
sandbox that sees only Python, dltbench and the plugin's own file, so the checkpoint must be
attached (read-only; its sha256 goes into every record and the config hash, so another
checkpoint is another row, never a resumed one):

    python examples/score-a-checkpoint/make_checkpoint.py          # or bring your own model.pt
    dltbench run --task robust --plugin examples/score-a-checkpoint/checkpoint_defense.py \\
        --attach examples/score-a-checkpoint/model.pt --method checkpoint

The same pattern scores a `certified` base classifier: subclass CertifiedMethod instead.
"""

from pathlib import Path

import torch

import dltbench
from dltbench.models import default_classifier
from dltbench.tasks.robust import DefenseMethod

CHECKPOINT = Path(__file__).with_name("model.pt")


@dltbench.register_method(task="robust", name="checkpoint")
class Checkpoint(DefenseMethod):
    """A fixed, already trained classifier loaded from the attached model.pt (no training)."""

    version = "1"

    def train(self, data, config, ctx):
        if not CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"{CHECKPOINT} is not visible here: pass --attach {CHECKPOINT} to dltbench run"
            )
        model = default_classifier(data.shape, data.num_classes)
        # weights_only: a checkpoint is data, never code to run.
        model.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True))
        return model.to(ctx.device).eval()
