#!/usr/bin/env python3
"""runc for the tests' dockerd, minus the capabilities this machine's bounding set lacks.

Docker 20.10 gives a ``--privileged`` container every capability it knows, not the ones the
daemon itself holds; where the machine (itself a container) withholds one, e.g.
CAP_SYS_RESOURCE, runc fails with "unable to apply caps: operation not permitted", and kind's
nodes, which run privileged, cannot start. docker.py registers this script as dockerd's
default runtime on such a machine: it removes the unavailable capabilities from the container
spec (``create``/``run``) or the process spec (``exec``) and hands over to the real runc.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

# Linux capability numbers 0..40 (include/uapi/linux/capability.h).
CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE"
).split()


def bounding_set() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("CapBnd:"))
    return int(line.split()[1], 16)


def missing() -> set[str]:
    """The capabilities (CAP_*) this process's bounding set lacks."""
    bounding = bounding_set()
    return {f"CAP_{name}" for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1}


def _strip(path: str, process_key: str | None, unavailable: set[str]) -> None:
    with open(path) as f:
        spec = json.load(f)
    process = spec.get(process_key, {}) if process_key else spec
    capabilities = process.get("capabilities") or {}
    for kind, names in capabilities.items():
        capabilities[kind] = [name for name in names if name not in unavailable]
    with open(path, "w") as f:
        json.dump(spec, f)


def main(args: list[str]) -> None:
    unavailable = missing()
    if unavailable and ("create" in args or "run" in args) and "--bundle" in args:
        _strip(os.path.join(args[args.index("--bundle") + 1], "config.json"), "process", unavailable)
    if unavailable and "exec" in args and "--process" in args:
        _strip(args[args.index("--process") + 1], None, unavailable)
    runc = shutil.which("runc", path="/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
    if runc is None:
        sys.exit("runc_bounded: runc is not installed")
    os.execv(runc, ["runc", *args])


if __name__ == "__main__":
    main(sys.argv[1:])
