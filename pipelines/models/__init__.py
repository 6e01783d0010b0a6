"""pipelines/models."""
