"""PutPlace node agent: keeps the catalogue true for the files of one node."""

__version__ = "0.1.0"
