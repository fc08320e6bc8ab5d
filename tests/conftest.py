"""Test-session set-up that must happen before any test module imports Triton."""

import os

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in the interpreter. The flag is read when @triton.jit decorates,
    # so it must be set before the first import of kernels.*, whichever test module comes first.
    os.environ.setdefault("TRITON_INTERPRET", "1")
