"""Storage, cache and catalog adapters behind small protocols."""
