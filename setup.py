"""Declares the C extension only; all metadata lives in pyproject.toml."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zcsync.delta._rolling",
            ["zcsync/delta/_rolling.c"],
            depends=["zcsync/delta/xxhash.h"],
            extra_compile_args=["-O3"],
        ),
        Extension("zcsync._fsscan", ["zcsync/_fsscan.c"], depends=["zcsync/delta/xxhash.h"],
                  extra_compile_args=["-O2"]),
        Extension("zcsync._commit", ["zcsync/_commit.c"], extra_compile_args=["-O2"]),
        Extension("zcsync._fuzzy", ["zcsync/_fuzzy.c"], extra_compile_args=["-O2"]),
    ],
)
