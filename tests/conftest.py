"""Every test process computes on the kernel path the package's commands pin (chapter 07c), before any test module
imports torch: a run trained here and one trained by `python -m moe_study` or a study's notebook agree bit for bit."""
from moe_study.environment import pin_kernels

pin_kernels()
