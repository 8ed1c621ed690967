"""helm, the command line the chart is linted, rendered and installed with.

No package registry ships the real helm binary, so it is built from the Go module proxy
(helm.sh/helm/v3 has no replace directives). A `go install`-style build would report version
"v3.21" and assume Kubernetes 1.20 for `helm template` and `helm lint`; the version stamps
below make it say v3.21.4 and default to Kubernetes 1.36, the control plane of the tests.
"""

from __future__ import annotations

from pathlib import Path

from .base import bin_dir, go_build

NAME = "helm"
VERSION = "v3.21.4"
MODULE = "helm.sh/helm/v3"
KUBE_MINOR = "36"


def binary() -> Path:
    return bin_dir(NAME, VERSION) / "helm"


def install() -> Path:
    """Build helm into the cache unless it is already there; return the binary."""
    return go_build(
        name=NAME,
        version=VERSION,
        module=f"{MODULE}/cmd/helm",  # `go get` of the command pulls all it imports
        module_version=VERSION,
        package=f"{MODULE}/cmd/helm",
        binary="helm",
        ldflags=[
            f"-X {MODULE}/internal/version.version={VERSION}",
            f"-X {MODULE}/pkg/chartutil.k8sVersionMinor={KUBE_MINOR}",
            f"-X {MODULE}/pkg/lint/rules.k8sVersionMinor={KUBE_MINOR}",
        ],
        minutes="2-4",
    )
