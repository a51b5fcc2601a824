"""edgetl: a folder of labelled images to a small, fast, verified model on a CPU."""

__version__ = "0.1.0"
