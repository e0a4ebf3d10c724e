"""Builds the ARMOR CPU kernel extension (model_executors._C) from source on the installing machine.

Needs torch at build time: `pip install --no-build-isolation .` after torch (the Makefile does that).
All of the ISA-specific code is selected at run time, so one build runs on any x86-64 CPU.
"""
import platform

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

SRC = "model_executors/csrc/"
sources = [SRC + "armor_op.cpp", SRC + "kernel_portable.cpp"]
if platform.machine() in ("x86_64", "AMD64"):
    sources += [SRC + "kernel_avx512.cpp", SRC + "kernel_avx512_bf16.cpp", SRC + "kernel_avx2.cpp"]

setup(
    ext_modules=[CppExtension("model_executors._C", sources, extra_compile_args=["-O3", "-fopenmp", "-Wno-uninitialized"])],
    cmdclass={"build_ext": BuildExtension},
)
