"""The names a user gives for an engine: the backends and the precisions.

No torch here: the parent process of `python -m stream.run` checks `--engine` and
`--precision` with these before any child (which imports torch) starts.
"""

#: `--engine`: auto picks tensorrt, torch on CUDA or torch on the CPU (engines.pick_backend).
BACKENDS = ("auto", "torch", "tensorrt")
#: `--precision`: auto picks fp16 on CUDA, bf16 on a CPU with AMX or AVX512-BF16, else fp32
#: (engines.precision.pick).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
