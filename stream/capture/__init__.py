"""Capture processes: they fill the shared-memory rings from cameras, files and streams."""
