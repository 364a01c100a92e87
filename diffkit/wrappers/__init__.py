"""Model wrappers: the guidance stage, inverse problems, clipping and colour handling."""
