"""A recorded candidate outside the search: rebuilt from its record, written as files, logged as an MLflow model."""

from search.export.formats import export, load_exported

__all__ = ["export", "load_exported"]
