"""Lakestack das service."""
