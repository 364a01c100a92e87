"""Running: the programmatic api, file io, plots, provenance, data sets and memory planning."""
