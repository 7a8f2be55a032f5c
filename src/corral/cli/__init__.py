"""The ``corral`` command line: one module per noun (serve, sandbox, exec, cp)."""
