"""The recipe: its schema, the topology grammar, site settings, platform profiles, and
loading a file into a validated recipe. Pure: nothing here submits or starts anything."""
