"""On-disk key cache: sharded, content-addressed, atomic, resumable (see `keystore.py`)."""

from experiments.store.keystore import KeySet, KeyStore, cache_descriptor

__all__ = ["KeySet", "KeyStore", "cache_descriptor"]
