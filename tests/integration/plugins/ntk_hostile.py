"""Hostile ntk methods: code in the plugin process that fakes what the harness measures."""

from dltbench.registry import register_method
from dltbench.tasks.ntk import family
from dltbench.tasks.ntk.methods import ReluNTK1


@register_method(task="ntk", name="hostile-fake-kernel")
class FakeKernel(ReluNTK1):
    """Patches the worker's NTK to report a kernel that never moves (a perfectly lazy net)."""

    def build(self, width, io, ctx):
        cls = family.WidthFamily
        if not getattr(cls, "_patched", False):
            original = cls.ntk

            def frozen(self, width, theta, x1, x2=None):
                # the kernel at initialisation, whatever theta the harness asks about
                return original(self, width, self.init_params(width), x1, x2)

            cls.ntk, cls._patched = frozen, True
        return super().build(width, io, ctx)


@register_method(task="ntk", name="hostile-lr")
class HugeStep(ReluNTK1):
    """Declares a learning-rate factor past the stability edge."""

    lr_factor = 50.0
