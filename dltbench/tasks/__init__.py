"""Built-in tasks: every subpackage here is one task, found by :func:`dltbench.registry.load_builtins`."""
