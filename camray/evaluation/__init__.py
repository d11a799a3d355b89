"""Localization evaluation: the evaluation set, the evaluator (Choe et al. measures) and the config sweep."""
