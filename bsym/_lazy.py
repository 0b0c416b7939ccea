"""Lazy package exports (PEP 562): a name is imported from its module on first access."""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package, exports, namespace):
    """``(__getattr__, __dir__)`` for a package whose ``exports`` map names to modules.

    ``namespace`` is the package's ``globals()``; a resolved name is cached there.
    """

    def __getattr__(name):
        if name in exports:
            value = getattr(import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
