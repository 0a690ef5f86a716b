"""Masks: SAM loading and box/point decoding, box masks, and the token broadcaster."""
