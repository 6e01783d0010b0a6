"""The registry alias names: serving follows them, promotion moves them, the review compares them.

They are also the prediction log's `arm` values (`pipelines.contracts.predlog`).
"""

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
