"""The ingest edge: decoding, validation and acceptance of event bundles."""
