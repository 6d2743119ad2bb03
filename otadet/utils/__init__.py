"""Small shared helpers: paths, logging, checkpoints, torch utilities."""
