"""Flywheel: a chat service that learns from its users while it serves them."""

__version__ = "0.1.0"
