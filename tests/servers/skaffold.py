"""skaffold, which the e2e suite runs as a developer would: ``skaffold build`` and ``skaffold run``
with the project's skaffold.yaml against the kind cluster.

Built from the Go module proxy, which serves v2.16.1 (v2.17.x, v2.18.0 and the version list:
403 on 2026-12-02). Its go.mod carries replace directives, which a dependent module ignores, so
the throwaway build module repeats them (``REPLACES``) and the build refuses to go on if they
differ from the module's own go.mod: the binary is built from the versions skaffold's
maintainers pinned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .base import ServerError, bin_dir, go_build, go_module_dir

NAME = "skaffold"
VERSION = "v2.16.1"
MODULE = "github.com/GoogleContainerTools/skaffold/v2"
# The replace directives of skaffold v2.16.1's go.mod: module -> version.
REPLACES = {
    "github.com/alessio/shellescape": "v1.4.2",
    "github.com/imdario/mergo": "v0.3.16",
    "github.com/docker/docker": "v27.5.1+incompatible",
    "github.com/docker/cli": "v27.5.1+incompatible",
    "github.com/spf13/viper": "v1.19.0",
    "github.com/buildpacks/lifecycle": "v0.20.5",
}


def binary() -> Path:
    return bin_dir(NAME, VERSION) / "skaffold"


def _same_replaces(build: Path, env: Mapping[str, str]) -> None:
    go_mod = (go_module_dir(build, env, MODULE) / "go.mod").read_text()
    theirs = {old: new_version for old, new, new_version in re.findall(r"^replace (\S+) => (\S+) (\S+)$", go_mod, re.M)}
    if theirs != REPLACES:
        raise ServerError(f"skaffold {VERSION}'s go.mod replaces {theirs}; set skaffold.REPLACES to match")


def install() -> Path:
    """Build skaffold into the cache unless it is already there; return the binary."""
    return go_build(
        name=NAME,
        version=VERSION,
        module=f"{MODULE}/cmd/skaffold",
        module_version=VERSION,
        package=f"{MODULE}/cmd/skaffold",
        binary="skaffold",
        replace={old: f"{old}@{version}" for old, version in REPLACES.items()},
        prepare=_same_replaces,
        ldflags=[f"-X {MODULE}/pkg/skaffold/version.version={VERSION}"],
        minutes="6-15",
    )
