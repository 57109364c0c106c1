"""Checkpoints: weights on disk. Training checkpoints read once, never executed (:mod:`.reading`);
the export folder's one owner (:mod:`.folder`) and each zoo's export format (:mod:`.formats`);
a name or a file turned into a model (:mod:`.loading`). Imports ``registry`` and the base modules."""
