"""Checkpoints: reading training checkpoints (never executing them) and turning a name or a
file into a model. Imports ``names`` and the base modules."""
