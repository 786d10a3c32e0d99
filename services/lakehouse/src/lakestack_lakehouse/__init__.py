"""Lakestack lakehouse service."""
