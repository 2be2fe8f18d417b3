"""`indexer evaluate`: detection quality (recall, false positives, thresholds) of every
matching method, measured through the product's own hashing code."""
