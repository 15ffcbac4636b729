"""Resource storage: one interface (:class:`Store`), several backends, selected by URL."""

from meshline.store.base import Change, Store
from meshline.store.factory import open_store

__all__ = ["Change", "Store", "open_store"]
