"""Shared test helpers (importable as ``support``)."""
