"""Retrieval: text units, sparse and dense scoring, and the paper's rankers."""
