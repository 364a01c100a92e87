"""An example diffkit plugin distribution (see `pf_euler` and the README)."""
