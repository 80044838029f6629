"""Untrusted image bytes in, pixels and tensors out: decoding with limits, preprocessing, PNG encoding."""
