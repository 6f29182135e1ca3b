"""Post-hoc analyses that run on saved results alone (no training)."""
