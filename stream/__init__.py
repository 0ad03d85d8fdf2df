"""Streaming audiovisual recognition: capture processes, shared-memory rings, window
sampling, preprocessing, aggregation, ZeroMQ publishing and the subscriber client.

Importing this package is cheap: nothing here imports torch or OpenCV at module level,
so capture processes and subscribers start fast.
"""
