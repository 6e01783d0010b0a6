"""Prefect flows: thin wiring of the pure steps in `pipelines`, `validation` and `registry`.

Nothing imports `flows` except the CLI entry point and Prefect deployments (prefect.yaml).
"""
