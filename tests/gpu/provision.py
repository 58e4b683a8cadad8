"""The packages tests/gpu/check.sh needs (tests/gpu/packages.txt, at the pins of tests/requirements.txt):
added to a Python that lacks them, or downloaded as wheels for a machine without network.

    python tests/gpu/provision.py install TARGET [--wheels DIR]   # into TARGET (put it on PYTHONPATH)
    python tests/gpu/provision.py fetch DIR [--python-version 3.12]

``install`` adds only what the running Python does not have at all (a machine's own, newer numpy or transformers
stay): from the wheels in DIR when given, else from the package index. Whatever cannot be added is listed, and the
check skips the sections that need it, saying which import failed.
``fetch`` downloads the packages the GPU image lacks (those not marked ``image``) as wheels for that Python,
building a wheel here for the few published as source only (pure Python).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# a distribution whose presence is not enough: setuptools ≥ 81 no longer has the pkg_resources clip-anytorch imports
NEEDS_MODULE = {"setuptools": "pkg_resources"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict:
    found = {}
    with open(os.path.join(ROOT, "tests", "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==")
                found[normalize(name)] = (name.strip(), version.strip())
    return found


def packages() -> list:
    """``(name, version, on_gpu_image)`` for every line of packages.txt."""
    pinned = pins()
    out = []
    with open(os.path.join(HERE, "packages.txt"), encoding="utf-8") as f:
        for line in f:
            fields = line.split("#")[0].split()
            if fields:
                name, version = pinned[normalize(fields[0])]
                out.append((name, version, fields[1:] == ["image"]))
    return out


def installed(name: str) -> bool:
    module = NEEDS_MODULE.get(normalize(name))
    if module is not None:
        return importlib.util.find_spec(module) is not None
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def pip(*args) -> bool:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    return subprocess.run(cmd).returncode == 0


def wheel_names(folder: str) -> set:
    return {normalize(f.split("-")[0]) for f in os.listdir(folder) if f.endswith(".whl")}


def install(target: str, wheels: str | None) -> int:
    missing = [(n, v) for n, v, _ in packages() if not installed(n)]
    if not missing:
        return 0
    os.makedirs(target, exist_ok=True)
    common = ["install", "--no-deps", "--no-compile", "--target", target, "--upgrade"]
    if wheels:
        have = wheel_names(wheels) if os.path.isdir(wheels) else set()
        todo = [(n, v) for n, v in missing if normalize(n) in have]
        args = [*common, "--no-index", "--find-links", wheels]
    else:
        todo = missing
        args = [*common, "--timeout", "5", "--retries", "1"]
    specs = [f"{n}=={v}" for n, v in todo]
    print(f"adding to {target}: {', '.join(specs) or 'nothing'}", flush=True)
    if specs and not pip(*args, *specs):
        if wheels:  # a wheel that does not fit this Python must not keep the others out (local, so quick)
            todo = [(n, v) for n, v in todo if pip(*args, f"{n}=={v}")]
        else:  # without network every one would wait out its timeout
            todo = []
    left = [f"{n}=={v}" for n, v in missing if (n, v) not in todo]
    if left:
        print(f"not available here: {', '.join(left)}; the check skips what needs them "
              "(bash tests/gpu/check.sh --fetch-wheels on a machine with network, then carry .gpu-wheels)", flush=True)
    return 0


def fetch(folder: str, python_version: str) -> int:
    os.makedirs(folder, exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    failed = []
    for name, version, on_image in packages():
        if on_image:
            continue
        spec = f"{name}=={version}"
        if pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version, "--implementation",
               "cp", *platforms, "-d", folder, spec):
            continue
        # published as source only: a wheel built here (these are pure Python, so it fits any machine)
        if not pip("wheel", "--no-deps", "-w", folder, spec):
            failed.append(spec)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"{folder}: {len(os.listdir(folder))} files, {size / 2**20:.1f} MiB" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("install")
    a.add_argument("target")
    a.add_argument("--wheels", default=None)
    f = sub.add_parser("fetch")
    f.add_argument("folder")
    f.add_argument("--python-version", default="3.12")
    args = ap.parse_args(argv)
    if args.command == "install":
        return install(args.target, args.wheels)
    return fetch(args.folder, args.python_version)


if __name__ == "__main__":
    sys.exit(main())
