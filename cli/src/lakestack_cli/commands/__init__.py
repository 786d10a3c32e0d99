"""One subcommand group per service: `lakestack streams|lakehouse|jobs|das|vector|events ...`."""
