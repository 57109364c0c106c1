"""Layers: chains standing for timm's own layer types (:mod:`.chains`), and chains as timm fx
leaves (:mod:`.tracing`). A base module: imports ``overparam`` and timm, nothing else here."""
