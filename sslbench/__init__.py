"""sslbench: a benchmark harness for colorization-family self-supervised pretext tasks."""

__version__ = "0.1.0"
