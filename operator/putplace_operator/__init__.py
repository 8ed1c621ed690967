"""PutPlace operator: reconciles PutPlaceInstance and ApiKey objects (kopf)."""

__version__ = "0.1.0"
