"""Generated code for the Lakestack contracts (see protos/ and `make protos`). Do not edit by hand."""
