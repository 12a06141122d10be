"""Operator tools and the composition root: the ``sie`` CLI, the worker's wiring, the local stack,
its supervisor and embedded servers, replay and load generation. May import every package."""
