"""The indexer: loads hash lists and image folders into the store and publishes snapshots."""
