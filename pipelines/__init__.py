"""Pure steps of the Kairos loop: sources, store, features, labels, splits, models, evaluation, export.

Nothing here imports Prefect or MLflow; `features`, `bundle` and `schema` import only numpy/pandas
so the serving runtime can reuse them.
"""
