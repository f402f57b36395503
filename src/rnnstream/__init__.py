"""rnnstream: streaming speech and time-series pipelines whose streaming output equals offline output."""

__version__ = "0.1.0"
