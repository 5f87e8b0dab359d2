"""Fused CPU backend: each elementwise rule traced, printed as C, compiled once, cached.

See codegen.py (the generated kernel), compiler.py (compilation and the on-disk cache) and
runner.py (the per-step call).
"""

from .runner import get_kernel, kernel_source, run_fused_cpu

__all__ = ["available", "get_kernel", "kernel_source", "run_fused_cpu"]


def available() -> bool:
    """Whether a C compiler is there to build fused CPU kernels (checked without compiling)."""
    from .compiler import CompilerUnavailable, compiler, compiler_identity

    try:
        compiler_identity(compiler())
    except CompilerUnavailable:
        return False
    return True
