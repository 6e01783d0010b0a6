"""A/B experiment statistics (issue 7 part 2): pure numpy/scipy functions the review flow calls.

Import from `pipelines.abstats` (the stable facade) or from the submodules:
`arms` (ArmData, per-arm metrics), `hac` (Newey-West, block lengths), `fixed` (Welch, bootstrap,
Diebold-Mariano), `sequential` (always-valid mixture SPRT), `compare` (compare_arms, ABResult).
"""
