"""``make bench`` / ``sie bench``: the engine against its bounds and a naive baseline."""
