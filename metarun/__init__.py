"""metarun: meta-train Transformer text classifiers that adapt from a handful of examples."""

__version__ = "0.2.0"


def __getattr__(name: str):
    """`from metarun import load` without importing torch for every `import metarun`."""
    if name == "load":
        from metarun.trained import load

        return load
    raise AttributeError(f"module 'metarun' has no attribute {name!r}")
