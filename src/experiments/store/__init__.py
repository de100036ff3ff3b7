"""On-disk key cache: sharded, one file per layer, content-addressed, atomic, resumable (see `keystore.py`)."""

from experiments.store.keystore import KeyStore, TokenIndex, cache_descriptor, entry_name, store_dtype

__all__ = ["KeyStore", "TokenIndex", "cache_descriptor", "entry_name", "store_dtype"]
