"""hashsvc: find known harmful images by perceptual-hash matching."""

__version__ = "0.1.0"
