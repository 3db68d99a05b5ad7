"""Vigil's shared package: schemas, settings, Redis key names, streams, inventory."""
