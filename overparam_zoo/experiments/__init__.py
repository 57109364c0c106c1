"""Experiments: data sets, the training recipe, ``compare`` with its report, and the demo (a
one-seed compare). Exports through ``sharing``; imports nothing from the CLI."""
