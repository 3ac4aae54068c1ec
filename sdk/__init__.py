"""CFRG inspection SDK, field side. Imports with numpy and opencv alone."""
__version__ = "0.1.0"
