"""The diffkit command-line interface (installed as `diffkit.cli`)."""
