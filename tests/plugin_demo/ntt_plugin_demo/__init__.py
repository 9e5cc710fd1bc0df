"""A demo ntt-batch plug-in: each extension point is one module here plus one entry point in pyproject.toml."""
