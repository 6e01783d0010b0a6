"""MLflow registry: training runs, model versions, aliases, promotion policy, alias history, rollback.

The only package that imports MLflow. Import the submodules directly (`registry.runs`,
`registry.promotion`, ...); nothing here runs at import time.
"""
