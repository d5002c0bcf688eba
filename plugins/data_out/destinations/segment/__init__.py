"""Segment identify/track events."""
