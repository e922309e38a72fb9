"""The ``mageflow`` command line."""

from mageflow.cli.main import cli, main

__all__ = ["cli", "main"]
