"""bsym: a reproducible benchmarking harness for neuroimaging foundation models."""

__version__ = "0.1.0"
