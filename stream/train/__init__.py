"""The data tools: `stream.record` (labelled clips from a camera and microphone),
clips and datasets on disk, and `stream.train` (fine-tuning a model on them).
"""
