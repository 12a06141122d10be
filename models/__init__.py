"""Model-lifecycle features on the core's ports: served versions, A/B counts, drift and shadows."""
