"""The chart tests use the operator tests' cluster fixtures: the CRDs applied, a fresh namespace."""

from tests.operator.conftest import crds, namespace

__all__ = ["crds", "namespace"]
