"""pipelines/sources."""
