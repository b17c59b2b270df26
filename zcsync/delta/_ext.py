"""Loads the C extension on first use, with a hint when it was never built."""
from __future__ import annotations

from types import ModuleType

_mod: ModuleType | None = None


def rolling() -> ModuleType:
    """Return zcsync.delta._rolling, or raise ImportError saying how to build it."""
    global _mod
    if _mod is None:
        try:
            from . import _rolling
        except ImportError as exc:
            raise ImportError(
                "zcsync.delta._rolling is not built: run 'pip install .' or "
                "'python setup.py build_ext --inplace' (needs a C compiler)"
            ) from exc
        _mod = _rolling
    return _mod
