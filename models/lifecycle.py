"""Old name of :mod:`models.hooks`, kept while ``ops/worker.py`` imports it from here.

Import from :mod:`models.hooks` instead; this module goes once nothing imports it.
"""

from models.hooks import ModelObserver, ServedVersions, build_model_hooks

__all__ = ["ModelObserver", "ServedVersions", "build_model_hooks"]
