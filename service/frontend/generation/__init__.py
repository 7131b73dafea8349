"""The completions API on the front end: schemas, validation, tokenization, output processing."""
