"""Integrity tooling run beside a live service: ``verify`` (re-hash stored content, find
missing and dangling content) and ``gc`` (collect content nothing references).

``putplace-api verify`` and ``putplace-api gc`` (``cli.py``) parse flags and print; the work
is here, on the same store and storage the server builds from the same ``Settings``.
"""
