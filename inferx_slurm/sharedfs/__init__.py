"""Shared-filesystem work: locks that hold across nodes, model staging, container images.
Everything a user keeps is written whole or not at all."""
