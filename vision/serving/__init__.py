"""Models at work: the hot-reloading registry, the dynamic batcher, and the engine built from both."""
