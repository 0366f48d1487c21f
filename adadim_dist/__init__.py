"""Distributed self-supervised pretraining with the AdaDim objective."""

__version__ = "0.1.0"
