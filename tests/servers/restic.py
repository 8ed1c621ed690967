"""restic, the backup tool a user would otherwise run: bench/vs_restic.py runs it on the same
trees as PutPlace's agent. Only the benchmark needs it, so the CI install lanes leave it out;
the bench installs it on demand (or ``python -m tests.servers install restic``).

Built from the Go module proxy, which serves v0.19.1 and nothing newer that was tried (v0.19.2,
v0.19.3, v0.20.0, v0.20.1, v0.21.0, v0.22.0: 403, whether blocked or not released the proxy does
not say; its version list names only v0.10.0; 2026-12-03). Its go.mod has no replace directives;
its ``toolchain go1.25.10`` line is ignored under GOTOOLCHAIN=local, where the local Go (1.26.8,
>= its ``go 1.25.8``) builds it: 63 s here (2 cores, Go caches warm from the other builds), 42 MB.
"""

from __future__ import annotations

from pathlib import Path

from .base import bin_dir, go_build

NAME = "restic"
VERSION = "v0.19.1"
MODULE = "github.com/restic/restic"


def binary() -> Path:
    return bin_dir(NAME, VERSION) / "restic"


def install() -> Path:
    """Build restic into the cache unless it is already there; return the binary."""
    return go_build(
        name=NAME,
        version=VERSION,
        module=f"{MODULE}/cmd/restic",
        module_version=VERSION,
        package=f"{MODULE}/cmd/restic",
        binary="restic",
        minutes="1-4",
    )
