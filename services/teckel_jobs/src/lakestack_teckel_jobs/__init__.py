"""Lakestack teckel_jobs service."""
