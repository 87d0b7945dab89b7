"""A plugin file that does not import."""

import dltbench_this_module_does_not_exist  # noqa: F401
