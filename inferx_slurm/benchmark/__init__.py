"""The benchmark client: its command lines per point and the reading of what it measured."""
