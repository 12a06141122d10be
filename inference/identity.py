"""Old name of :mod:`inference.passthrough_backend`, kept while ``ops/worker.py`` imports it from here.

Import :class:`~inference.passthrough_backend.PassThroughBackend` instead; this module goes once
nothing imports it.
"""

from inference.passthrough_backend import PassThroughBackend as IdentityBackend

__all__ = ["IdentityBackend"]
