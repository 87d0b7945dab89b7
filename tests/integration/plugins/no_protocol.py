"""A plugin that registers a class not following the certified protocol."""

import dltbench
from dltbench.tasks.certified import CertifiedMethod


@dltbench.register_method(task="certified", name="test-no-train")
class NoTrain(CertifiedMethod):
    """Forgets to implement train()."""
