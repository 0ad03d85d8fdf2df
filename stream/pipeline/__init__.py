"""The live pipeline: shared-memory rings, windows cut from them by timestamp,
preprocessing, the inference loop, smoothing, the preview window and the helpers every
pipeline process uses. `stream.run` composes it; capture processes write into its rings.
"""
