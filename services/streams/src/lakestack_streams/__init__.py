"""Lakestack streams service."""
