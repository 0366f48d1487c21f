"""Wiring: the Ray Train worker loop, driver, checkpoints, evaluation and tracking."""
