"""`kairos serve`: the serving runtime (`serving.server`), in this process.

The serving code imports neither mlflow, torch nor great_expectations; neither does this module.
"""

from __future__ import annotations

from serving.server import serve

__all__ = ["serve"]
