"""Corpus layer: the canonical Document record and readers of public formats."""
