"""Sharing: what leaves a training run. Collapse checks, the export (weights, ``config.json``,
model card), the metadata and data config behind it, hub upload and the save hooks. Imports
``checkpoints``, ``names`` and the base modules."""
