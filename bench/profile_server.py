"""Where the API process spends its time under one benchmark's load: putplace-api (1 worker)
runs under pyinstrument's sampling profiler while wrk (or curl) drives it, then the
profile of the event-loop thread is printed (and written as HTML next to it).

Investigation aid only: pyinstrument is NOT a project dependency.

    .venv/bin/pip install pyinstrument
    .venv/bin/python bench/profile_server.py put_file   [--seconds 10]
    .venv/bin/python bench/profile_server.py put_files  [--batch 1000]
    .venv/bin/python bench/profile_server.py upload     [--size-mib 1024]

Sampling slows the server down (each request costs more), so read shares, not rates.
The SQLite thread and worker threads are not sampled: only the event loop's thread,
where a call into them shows up as the awaiting frame (e.g. ``run_in_executor``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    ADMIN_KEY,
    SINGLE_BODY,
    Server,
    batch_body,
    curl_upload,
    http_json,
    keep_workdir,
    need_tool,
    need_wrk,
    run_wrk,
    temp_workdir,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["put_file", "put_files", "upload"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--interval", type=float, default=0.0005, help="sampling interval (s)")
    ap.add_argument("--fsync", default="true", help="PUTPLACE_STORAGE_FSYNC for the upload scenario")
    ap.add_argument("--out", default=None, help="where to write the HTML profile (default: temp dir)")
    args = ap.parse_args()
    if importlib.util.find_spec("pyinstrument") is None:
        sys.exit("error: pyinstrument is not installed (investigation only): .venv/bin/pip install pyinstrument")

    work = temp_workdir("profile")
    out_txt = work / "profile.txt"
    out_html = Path(args.out) if args.out else work / "profile.html"
    env = {
        "PUTPLACE_DATA_DIR": str(work / "data"),
        "PUTPLACE_HOST": "127.0.0.1",
        "PUTPLACE_ADMIN_KEY": ADMIN_KEY,
        "PUTPLACE_LOG_LEVEL": "warning",
        "PUTPLACE_STORAGE_FSYNC": args.fsync,
    }
    argv = [
        sys.executable,
        "-m",
        "pyinstrument",
        "-i",
        str(args.interval),
        "-r",
        "pyisession",
        "-o",
        str(work / "profile.pyisession"),
        "-m",
        "putplace_api.cli",
        "--port",
        "{port}",
    ]
    server = Server("profiled-putplace-api", argv, env, work, "/readyz")
    with server:
        if args.scenario == "upload":
            need_tool("curl", "apt-get install -y curl")
            src = work / "source.bin"
            block = os.urandom(64 * 1024 * 1024)
            digest = hashlib.sha256()
            with open(src, "wb") as f:
                for _ in range(args.size_mib // 64):
                    f.write(block)
                    digest.update(block)
            sha = digest.hexdigest()
            size = src.stat().st_size
            meta = {
                "filepath": str(src),
                "hostname": "h",
                "ip_address": "127.0.0.1",
                "sha256": sha,
                "file_size": size,
                "file_mode": 33188,
                "file_uid": 0,
                "file_gid": 0,
                "file_mtime": 1.0,
                "file_atime": 1.0,
                "file_ctime": 1.0,
            }
            assert http_json("POST", server.base_url + "/put_file", meta)[0] == 201
            t0 = time.perf_counter()
            subprocess.run(
                curl_upload(src, f"{server.base_url}/upload_file/{sha}", "--fail", "-o", "/dev/null"), check=True
            )
            print(f"upload of {args.size_mib} MiB took {time.perf_counter() - t0:.2f}s under the profiler")
            src.unlink()
        else:
            need_wrk()
            path, snippet = (
                ("/put_file", SINGLE_BODY) if args.scenario == "put_file" else ("/put_files", batch_body(args.batch))
            )
            r = run_wrk(
                server.base_url,
                path,
                snippet,
                connections=args.connections,
                seconds=args.seconds,
                prefix="prof",
                workdir=work,
                timeout_s=60,
            )
            print(
                f"{r.requests} requests in {r.seconds:.1f}s under the profiler ({r.rps:,.0f} req/s), {r.errors} errors"
            )
    shutil.rmtree(work / "data", ignore_errors=True)  # keep only the profile and the server log
    keep_workdir(work)
    session = work / "profile.pyisession"
    for renderer, target, extra in (
        ("text", out_txt, ["--no-color", "-p", "processor_options.filter_threshold=0.005"]),
        ("html", out_html, []),
    ):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "--load",
                str(session),
                "-r",
                renderer,
                "-o",
                str(target),
                "--show",
                "*/putplace_api/*",
                "--show",
                "*/putplace_client/*",
                *extra,
            ],
            check=True,
        )
    print(out_txt.read_text())
    print(f"profile: {out_txt} and {out_html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
