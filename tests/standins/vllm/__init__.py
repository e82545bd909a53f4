# A stand-in, named so in every version string it reports (provenance records it as such).
__version__ = "0.0.0+standin"
