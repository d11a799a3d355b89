"""Bytes -> RGB canvases: CPU decoding, and batched decoding on the model's device."""
