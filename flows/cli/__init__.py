"""The `kairos` command line: `main` wires one module per command group (data, train, serve, review, tune)."""

from flows.cli.main import app, main

__all__ = ["app", "main"]
