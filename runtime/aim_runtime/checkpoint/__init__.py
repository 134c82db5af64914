"""Checkpoint: what a model needs, read from its directory without loading weights (model facts,
exact parameter counts), downloading and verifying a checkpoint, and the embedded tiny model."""
