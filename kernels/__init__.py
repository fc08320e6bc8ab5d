"""Kernels for the GPU path beside their PyTorch references; CPU tensors use the references."""

from kernels.kda_reference import chunk_kda_reference as chunk_kda
from kernels.kda_reference import recurrent_kda_reference as recurrent_kda

__all__ = ["chunk_kda", "recurrent_kda"]
