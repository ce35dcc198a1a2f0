"""metarun: meta-train Transformer text classifiers that adapt from a handful of examples."""

__version__ = "0.1.0"
