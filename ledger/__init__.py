"""Byte accounting of Flower messages: their sizes at each level, and the run ledger."""
