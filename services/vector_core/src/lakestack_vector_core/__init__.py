"""Lakestack vector_core service."""
