"""Pruning: which weights or channels a candidate removes (methods, scores to masks, channel graphs, plans)."""
