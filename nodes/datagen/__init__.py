"""Editing-pair data pipeline (InsightEdit's AdvancedEdit) on local models: caption -> ground ->
mask -> inpaint -> rewrite -> score -> export. Run it with ``python nodes/datagen/cli.py``."""
