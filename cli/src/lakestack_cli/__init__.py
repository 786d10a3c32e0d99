"""The `lakestack` command: run, check and stop the whole stack on one machine."""
