"""Sharing: what leaves a training run. Collapse checks, the export (weights, ``config.json``,
model card), the metadata and data config behind it, hub upload, INT8 and the save hooks.
Export folders are read and written through :mod:`overparam_zoo.checkpoints.folder`. Imports
``checkpoints``, ``registry`` and the base modules."""
