#!/usr/bin/env python3
"""Rehearse the Colab install plan against Google's published Colab runtime package lists.

For each snapshot (a folder with `pip-freeze.gpu.txt` and `os-info-gpu.txt`, see
../shared/colab/README.md) and kit, this builds a fake `--target` folder with one dist-info per
preinstalled package, carrying that release's real core metadata from the index, runs every step
of `colab_install_plan` through `uv pip install --dry-run` against it for Colab's platform, applies
the step, and reports what the plan changes, adds and downloads, whether the runtime must restart,
and which requirements the result breaks. Only metadata is fetched: no wheel is downloaded.

    python scripts/colab_rehearsal.py [--snapshot DIR ...] [--kit full|light ...] [--json OUT]

Exit status 1 when a plan does not resolve or breaks a requirement in our stack that is not in
ACCEPTED_BREAKS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import email.parser
import functools
import gzip
import http.client
import importlib.util
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, canonicalize_name
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from grpo_helpers.install import InstallStep, colab_install_plan  # noqa: E402

INDEX_URL = "https://pypi.org/simple"  # uv's default index, the one the bootstrap uses on Colab
T4 = (7, 5)  # the GPU the full kit is planned for
GLIBC = (2, 35)  # Ubuntu 22.04, every Colab image here
UV_PLATFORM = f"x86_64-manylinux_{GLIBC[0]}_{GLIBC[1]}"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grpo-colab-rehearsal"
LISTING_TTL_S = 24 * 3600  # index listings change; a release's metadata never does
WORKERS = 16
TAIL_BYTES = 256 * 1024  # read first from a wheel's end: its zip central directory
CHUNK_BYTES = 64 * 1024  # the least a range request asks for
RETRIES = 5

# Colab's kernel has imported numpy and PIL (pillow) before the first cell runs; that is why
# Unsloth's Colab install cell pins both to the versions already loaded. A plan that changes either
# needs a runtime restart.
RESTART_IF_CHANGED = ("numpy", "pillow")

# Requirements the plan breaks on purpose (unsloth and unsloth-zoo go in with --no-deps):
# (requirer, required) -> why that is fine.
_CERTIFI = "a certifi release floor, not an API need; --no-deps keeps Colab's certifi"
_UNSLOTH_CLI = "imported only by unsloth's CLI and Studio (unsloth_cli/, studio/), which the notebooks never run"
ACCEPTED_BREAKS: dict[tuple[str, str], str] = {
    ("unsloth", "certifi"): _CERTIFI,
    ("unsloth-zoo", "certifi"): _CERTIFI,
    ("unsloth", "json5"): _UNSLOTH_CLI,
    ("unsloth", "structlog"): _UNSLOTH_CLI,
}


@dataclass(frozen=True)
class Installed:
    """One line of a pip freeze: a normalised name, its version (None if unknown) and its URL if any."""

    name: str
    version: str | None
    url: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """A Colab runtime image: its label, Python version and installed packages."""

    label: str
    python: str
    packages: dict[str, Installed]


@dataclass(frozen=True)
class IndexFile:
    """One file of an index listing."""

    filename: str
    url: str
    size: int


@dataclass(frozen=True)
class Meta:
    """The core metadata of a release that the rehearsal needs."""

    name: str
    version: str
    requires_python: str | None = None
    requires_dist: tuple[str, ...] = ()
    provides_extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lookup:
    """What the index says about name==version: metadata, the file uv would download, caveats."""

    meta: Meta | None
    download: IndexFile | None
    note: str = ""
    stand_in: bool = False  # the metadata is of another build (PyPI's for a local version like +cu128)


@dataclass(frozen=True)
class Entry:
    """A package of the fake environment: the installed version and its metadata (None: unknown)."""

    version: str
    meta: Meta | None


@dataclass(frozen=True)
class Break:
    """An installed package's requirement that the installed set does not satisfy."""

    requirer: str
    requirer_version: str
    requirement: str
    required: str
    installed: str | None

    def describe(self) -> str:
        """'a 1.0 requires b<2, has 2.1'."""
        return f"{self.requirer} {self.requirer_version} requires {self.requirement}, has {self.installed or 'none'}"


@dataclass
class Rehearsal:
    """The outcome of one plan on one snapshot."""

    snapshot: str
    python: str
    kit: str
    steps: list[str] = field(default_factory=list)
    resolved: bool = True
    error: str = ""
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)
    downloads: dict[str, int] = field(default_factory=dict)  # bytes of the wheels uv would fetch, by package
    restart: bool = False
    conflicts: list[Break] = field(default_factory=list)
    accepted: list[tuple[Break, str]] = field(default_factory=list)
    elsewhere: list[Break] = field(default_factory=list)
    already_broken: int = 0
    not_checked: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """The one-line summary."""
        return (f"{self.snapshot}/{self.kit}: resolved {'yes' if self.resolved else 'NO'}, "
                f"{len(self.changed)} changed, {len(self.added)} added, "
                f"{sum(self.downloads.values()) / 1e9:.2f} GB download, restart {'yes' if self.restart else 'no'}, "
                f"{len(self.conflicts)} breaks in our stack (+{len(self.accepted)} accepted), "
                f"{len(self.elsewhere)} breaks elsewhere, {len(self.not_checked)} not checked")


# Snapshots ------------------------------------------------------------------------------------

def version_from_url(url: str) -> str | None:
    """The version in a wheel's or sdist's file name at the end of a URL (None for git URLs)."""
    filename = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def parse_freeze(text: str) -> dict[str, Installed]:
    """`name==version` and `name @ URL` lines of a pip freeze, by normalised name."""
    packages = {}
    for line in text.splitlines():
        line = line.strip()
        if "==" in line and not line.startswith("#"):
            name, version = (part.strip() for part in line.split("==", 1))
            packages[canonicalize_name(name)] = Installed(canonicalize_name(name), version)
        elif " @ " in line and not line.startswith("#"):
            name, url = (part.strip() for part in line.split(" @ ", 1))
            packages[canonicalize_name(name)] = Installed(canonicalize_name(name), version_from_url(url), url)
    return packages


def parse_python_version(os_info: str) -> str:
    """The `Python X.Y.Z` line of an os-info file."""
    match = re.search(r"^Python (\d+\.\d+\.\d+)", os_info, re.MULTILINE)
    if not match:
        raise ValueError("no 'Python X.Y.Z' line in the os-info file")
    return match.group(1)


def load_snapshot(folder: Path) -> Snapshot:
    """A snapshot folder: pip-freeze.gpu.txt and os-info-gpu.txt."""
    return Snapshot(folder.name, parse_python_version((folder / "os-info-gpu.txt").read_text()),
                    parse_freeze((folder / "pip-freeze.gpu.txt").read_text()))


def default_snapshots() -> list[Path]:
    """Every snapshot under $COLAB_SNAPSHOTS or ../shared/colab beside the repo, `latest` first."""
    root = Path(os.environ.get("COLAB_SNAPSHOTS") or REPO_ROOT.parent / "shared" / "colab")
    found = [path.parent for path in root.glob("*/pip-freeze.gpu.txt")]
    return sorted(found, key=lambda path: (path.name == "latest", path.name), reverse=True)


# Platform -------------------------------------------------------------------------------------

def colab_tags(python: str) -> list[tags.Tag]:
    """Wheel tags Colab's CPython accepts on x86_64 manylinux up to GLIBC, most preferred first."""
    major, minor = (int(part) for part in python.split(".")[:2])
    legacy = {17: "manylinux2014_x86_64", 12: "manylinux2010_x86_64", 5: "manylinux1_x86_64"}
    platforms = []
    for glibc_minor in range(GLIBC[1], 4, -1):
        platforms.append(f"manylinux_{GLIBC[0]}_{glibc_minor}_x86_64")
        platforms.extend([legacy[glibc_minor]] if glibc_minor in legacy else [])
    interpreter = f"cp{major}{minor}"
    return [*tags.cpython_tags((major, minor), [interpreter], platforms),
            *tags.compatible_tags((major, minor), interpreter, platforms)]


@functools.cache
def tag_ranks(python: str) -> dict[tags.Tag, int]:
    """Each of Colab's wheel tags -> its preference (0 best)."""
    return {tag: rank for rank, tag in enumerate(colab_tags(python))}


def best_wheel(files: Iterable[IndexFile], ranks: Mapping[tags.Tag, int]) -> IndexFile | None:
    """The wheel uv would pick: the one whose best tag ranks first (None if none is compatible)."""
    best: tuple[int, IndexFile] | None = None
    for file in files:
        if file.filename.endswith(".whl"):
            rank = min(ranks.get(tag, len(ranks)) for tag in parse_wheel_filename(file.filename)[3])
            if rank < len(ranks) and (best is None or rank < best[0]):
                best = (rank, file)
    return best[1] if best else None


def marker_environment(python: str) -> dict[str, str]:
    """PEP 508 marker values of Colab's CPython on Linux x86_64 (no extras requested)."""
    return {"implementation_name": "cpython", "implementation_version": python, "os_name": "posix",
            "platform_machine": "x86_64", "platform_python_implementation": "CPython", "platform_release": "",
            "platform_system": "Linux", "platform_version": "", "python_full_version": python,
            "python_version": ".".join(python.split(".")[:2]), "sys_platform": "linux", "extra": ""}


# The index ------------------------------------------------------------------------------------

_connections = threading.local()  # each worker thread keeps one connection per host
_TLS = ssl.create_default_context()


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET over this thread's keep-alive connection, following redirects and retrying failures."""
    for attempt in range(RETRIES):
        parts = urllib.parse.urlsplit(url)
        pool = _connections.__dict__.setdefault("pool", {})
        if parts.netloc not in pool:
            pool[parts.netloc] = (http.client.HTTPSConnection(parts.netloc, timeout=60, context=_TLS)
                                  if parts.scheme == "https" else http.client.HTTPConnection(parts.netloc, timeout=60))
        connection = pool[parts.netloc]
        try:
            connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                               headers={"Accept-Encoding": "gzip", **(headers or {})})
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            pool.pop(parts.netloc)
            time.sleep(attempt)  # the first retry at once: the server may just have closed an idle connection
            continue
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if response.status in (301, 302, 303, 307, 308):
            url = urllib.parse.urljoin(url, response.getheader("Location", ""))
        elif response.status in (429, 500, 502, 503, 504) and attempt < RETRIES - 1:
            time.sleep(1 + attempt)
        else:
            return response.status, body
    raise OSError(f"GET {url}: no answer after {RETRIES} tries")


class RangeFile(io.RawIOBase):
    """A remote file read with HTTP range requests: enough for zipfile to read one wheel member."""

    def __init__(self, url: str, size: int) -> None:
        super().__init__()
        self.url, self.size, self.position = url, size, 0
        self.spans: list[tuple[int, bytes]] = []
        self._fetch(max(0, size - TAIL_BYTES), size)

    def _fetch(self, start: int, end: int) -> bytes:
        """Bytes start..end-1 of the file, kept for later reads."""
        status, body = http_get(self.url, {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"})
        if status not in (200, 206):
            raise OSError(f"range request for {self.url}: HTTP {status}")
        body = body[start:end] if status == 200 else body
        self.spans.append((start, body))
        return body

    def readable(self) -> bool:
        """Yes."""
        return True

    def seekable(self) -> bool:
        """Yes."""
        return True

    def tell(self) -> int:
        """The read position."""
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the read position."""
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Read at the position from a fetched span, or fetch at least CHUNK_BYTES from there."""
        end = min(self.position + len(buffer), self.size)
        if end <= self.position:
            return 0
        chunk = next((data[self.position - start:end - start] for start, data in self.spans
                      if start <= self.position and end <= start + len(data)), None)
        if chunk is None:
            chunk = self._fetch(self.position, min(self.size, max(end, self.position + CHUNK_BYTES)))
            chunk = chunk[:end - self.position]
        buffer[:len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


def parse_metadata(text: str) -> Meta:
    """The fields the rehearsal needs from a METADATA file."""
    message = email.parser.HeaderParser().parsestr(text)
    return Meta(str(message["Name"]), str(message["Version"]), message["Requires-Python"],
                tuple(message.get_all("Requires-Dist") or ()), tuple(message.get_all("Provides-Extra") or ()))


def metadata_text(meta: Meta, version: str) -> str:
    """A METADATA file for a fake dist-info, at the version actually installed."""
    lines = ["Metadata-Version: 2.1", f"Name: {meta.name}", f"Version: {version}",
             *([f"Requires-Python: {meta.requires_python}"] if meta.requires_python else []),
             *(f"Provides-Extra: {extra}" for extra in meta.provides_extra),
             *(f"Requires-Dist: {requirement}" for requirement in meta.requires_dist)]
    return "\n".join(lines) + "\n"


def wheel_metadata(wheel: IndexFile) -> Meta:
    """A wheel's METADATA: its PEP 658 `.metadata` file, else read from the wheel by range requests."""
    status, body = http_get(wheel.url + ".metadata")
    if status == 200:
        return parse_metadata(body.decode("utf-8", "replace"))
    with zipfile.ZipFile(RangeFile(wheel.url, wheel.size)) as archive:
        member = next(name for name in archive.namelist()
                      if name.count("/") == 1 and name.endswith(".dist-info/METADATA"))
        return parse_metadata(archive.read(member).decode("utf-8", "replace"))


class Index:
    """The package index's listings and metadata, cached on disk under CACHE_DIR."""

    def __init__(self, cache: Path = CACHE_DIR) -> None:
        self.cache = cache
        self.listings: dict[str, list[IndexFile] | None] = {}
        self.fetched: set[str] = set()  # listings fetched by this process
        self.requests = 0  # answered by the index (the rest came from the cache)
        self.lock = threading.Lock()

    def _write(self, path: Path, data: object) -> None:
        """Write JSON atomically (other threads may read it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(path)

    def _count(self) -> None:
        """Count one request to the index."""
        with self.lock:
            self.requests += 1

    def listing(self, name: str, refresh: bool = False) -> list[IndexFile] | None:
        """The files of a project (None when the index lacks it); cached for LISTING_TTL_S unless refresh."""
        if name in self.listings and (not refresh or name in self.fetched):
            return self.listings[name]
        path = self.cache / "simple" / f"{name}.json"
        if not refresh and path.is_file() and time.time() - path.stat().st_mtime < LISTING_TTL_S:
            cached = json.loads(path.read_text())
        else:
            status, body = http_get(f"{INDEX_URL}/{name}/", {"Accept": "application/vnd.pypi.simple.v1+json"})
            if status not in (200, 404):
                raise OSError(f"index listing of {name}: HTTP {status}")
            self._count()
            self.fetched.add(name)
            cached = None if status == 404 else [[file["filename"], file["url"], file.get("size") or 0]
                                                 for file in json.loads(body)["files"]]
            self._write(path, cached)
        self.listings[name] = None if cached is None else [IndexFile(*file) for file in cached]
        return self.listings[name]

    def metadata(self, name: str, version: str, wheels: list[IndexFile]) -> Meta:
        """The metadata of name==version (the first wheel's), cached for good."""
        path = self.cache / "metadata" / f"{name}=={version}.json"
        if path.is_file():
            cached = json.loads(path.read_text())
            return Meta(cached["name"], cached["version"], cached["requires_python"],
                        tuple(cached["requires_dist"]), tuple(cached["provides_extra"]))
        meta = wheel_metadata(wheels[0])
        self._count()
        self._write(path, asdict(meta))
        return meta

    def lookup(self, name: str, version: str, python: str) -> Lookup:
        """Metadata and download of name==version for Colab's Python; a note says what is missing."""
        try:
            files = self.listing(name)
            if files is None or not release_files(files, version)[1]:
                files = self.listing(name, refresh=True)  # a release newer than the cached listing?
            if files is None:
                return Lookup(None, None, "not on the index")
            release, same = release_files(files, version)
            if not same:
                return Lookup(None, None, f"{version} not on the index")
            wheel = best_wheel(same, tag_ranks(python))
            wheels = [wheel] if wheel else [file for file in same if file.filename.endswith(".whl")]
            if not wheels:
                return Lookup(None, same[0], "sdist only: requirements not read")
            if release == Version(version):
                return Lookup(self.metadata(name, version, wheels), wheel)
            return Lookup(self.metadata(name, str(release), wheels), wheel, stand_in=True,
                          note=f"requirements of the index's {release} build, those this runtime lacks dropped")
        except (OSError, ValueError, KeyError, StopIteration, zipfile.BadZipFile, http.client.HTTPException) as error:
            return Lookup(None, None, f"index lookup failed: {error}")


def release_files(files: list[IndexFile], version: str) -> tuple[Version, list[IndexFile]]:
    """The release of that version and its files; for a local version with none, its public one's."""
    wanted = Version(version)
    for release in [wanted, Version(wanted.public)] if wanted.local else [wanted]:
        same = [file for file in files if release_of(file.filename) == release]
        if same:
            return release, same
    return wanted, []


def release_of(filename: str) -> Version | None:
    """The version in a wheel or sdist file name (None for other files)."""
    if filename.endswith(".whl"):
        return parse_version(filename.split("-")[1] if filename.count("-") >= 4 else "")
    for suffix in (".tar.gz", ".zip"):
        if filename.endswith(suffix):
            return parse_version(filename.removesuffix(suffix).rpartition("-")[2])
    return None


@functools.cache
def parse_version(text: str) -> Version | None:
    """A version string parsed once (None when it is not one)."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


# The fake environment -------------------------------------------------------------------------

class FakeEnv:
    """A `--target` folder of dist-infos that uv takes for the installed packages."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.entries: dict[str, Entry] = {}

    def _dist_info(self, name: str, version: str) -> Path:
        """The dist-info folder of name==version."""
        return self.folder / f"{name.replace('-', '_')}-{version}.dist-info"

    def add(self, name: str, version: str, meta: Meta | None) -> None:
        """Install name==version (replacing another version) with this metadata."""
        self.remove(name)
        dist_info = self._dist_info(name, version)
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(metadata_text(meta or Meta(name, version), version))
        (dist_info / "INSTALLER").write_text("uv\n")
        (dist_info / "RECORD").write_text("")
        self.entries[name] = Entry(version, meta)

    def remove(self, name: str) -> None:
        """Uninstall a package if it is there."""
        entry = self.entries.pop(name, None)
        if entry:
            shutil.rmtree(self._dist_info(name, entry.version))

    def apply(self, changes: list[tuple[str, str, str]], lookups: Mapping[tuple[str, str], Lookup]) -> None:
        """Apply uv's `- name==version` then `+ name==version` lines."""
        for sign, name, _ in changes:
            if sign == "-":
                self.remove(name)
        for sign, name, version in changes:
            if sign == "+":
                self.add(name, version, lookups[name, version].meta)


# uv -------------------------------------------------------------------------------------------

def uv_command() -> list[str]:
    """uv on PATH, else `python -m uv`."""
    if shutil.which("uv"):
        return [str(shutil.which("uv"))]
    if importlib.util.find_spec("uv"):
        return [sys.executable, "-m", "uv"]
    raise SystemExit("uv not found: install it (pip install uv) or put it on PATH")


def parse_uv_changes(output: str) -> list[tuple[str, str, str]]:
    """uv's ` + name==version` / ` - name==version` lines as (sign, normalised name, version)."""
    return [(match.group(1), canonicalize_name(match.group(2)), match.group(3))
            for match in re.finditer(r"^ ([+-]) (\S+)==(\S+)$", output, re.MULTILINE)]


def dry_run(uv: list[str], env: FakeEnv, python: str, step: InstallStep) -> tuple[list[tuple[str, str, str]], str]:
    """uv's dry run of one step against the fake env: its changes, or the error ('' when it resolved)."""
    command = [*uv, "pip", "install", "--dry-run", "--color", "never", "--target", str(env.folder),
               "--python-version", python, "--python-platform", UV_PLATFORM, *step.uv_args()]
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stderr + done.stdout
    if done.returncode:
        return [], "\n".join(line for line in output.strip().splitlines() if not line.startswith("Using "))
    return parse_uv_changes(output), ""


# Requirements ---------------------------------------------------------------------------------

def requirements_of(meta: Meta | None, markers: Mapping[str, str]) -> list[Requirement]:
    """A package's requirements without extras, markers evaluated (unparsable ones skipped)."""
    found = []
    for line in meta.requires_dist if meta else ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate(dict(markers)):
            found.append(requirement)
    return found


def satisfied_only(meta: Meta, installed: Mapping[str, str]) -> Meta:
    """The metadata keeping only the requirements the installed set satisfies (for a stand-in build)."""
    kept = []
    for line in meta.requires_dist:
        try:
            requirement = Requirement(line)
            have = installed.get(canonicalize_name(requirement.name))
            if have and requirement.specifier.contains(have, prereleases=True):
                kept.append(line)
        except (InvalidRequirement, InvalidVersion):
            continue
    return Meta(meta.name, meta.version, meta.requires_python, tuple(kept), meta.provides_extra)


def find_breaks(entries: Mapping[str, Entry], markers: Mapping[str, str]) -> list[Break]:
    """Every requirement of an installed package (Requires-Python too) that the runtime does not satisfy."""
    breaks = []
    python = markers["python_full_version"]
    for name, entry in sorted(entries.items()):
        requires_python = entry.meta.requires_python if entry.meta else None
        try:
            if requires_python and not SpecifierSet(requires_python).contains(python, prereleases=True):
                breaks.append(Break(name, entry.version, f"Python{requires_python}", "python", python))
        except InvalidSpecifier:
            pass
        for requirement in requirements_of(entry.meta, markers):
            required = canonicalize_name(requirement.name)
            have = entries.get(required)
            try:
                satisfied = have is not None and requirement.specifier.contains(have.version, prereleases=True)
            except InvalidVersion:
                satisfied = False
            if not satisfied:
                breaks.append(Break(name, entry.version, str(requirement), required, have.version if have else None))
    return breaks


def dependency_closure(roots: Iterable[str], entries: Mapping[str, Entry], markers: Mapping[str, str]) -> set[str]:
    """The roots and every installed package they require, directly or not."""
    seen: set[str] = set()
    todo = [root for root in roots if root in entries]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(required for requirement in requirements_of(entries[name].meta, markers)
                        if (required := canonicalize_name(requirement.name)) in entries)
    return seen


def classify_breaks(before: list[Break], after: list[Break], stack: set[str]) -> tuple[
        list[Break], list[tuple[Break, str]], list[Break]]:
    """New breaks, split: conflicts (requirer in our stack), accepted ones with why, breaks elsewhere."""
    existing = {(item.requirer, item.requirer_version, item.requirement) for item in before}
    conflicts, accepted, elsewhere = [], [], []
    for item in after:
        if (item.requirer, item.requirer_version, item.requirement) in existing:
            continue
        if item.requirer not in stack:
            elsewhere.append(item)
        elif (item.requirer, item.required) in ACCEPTED_BREAKS:
            accepted.append((item, ACCEPTED_BREAKS[item.requirer, item.required]))
        else:
            conflicts.append(item)
    return conflicts, accepted, elsewhere


# The rehearsal --------------------------------------------------------------------------------

def lookup_all(index: Index, wanted: Iterable[tuple[str, str]], python: str,
               pool: concurrent.futures.Executor) -> dict[tuple[str, str], Lookup]:
    """Look up many name==version concurrently."""
    keys = sorted(set(wanted))
    return dict(zip(keys, pool.map(lambda key: index.lookup(key[0], key[1], python), keys), strict=True))


def rehearse(snapshot: Snapshot, kit: str, index: Index, uv: list[str], pool: concurrent.futures.Executor,
             preinstalled: Mapping[tuple[str, str], Lookup]) -> Rehearsal:
    """Run the kit's plan against the snapshot, step by step, and judge the result."""
    started = time.monotonic()
    result = Rehearsal(snapshot.label, snapshot.python, kit)
    markers = marker_environment(snapshot.python)
    versions = {name: package.version for name, package in snapshot.packages.items() if package.version}
    for name, package in snapshot.packages.items():
        notes = [f"installed from {package.url}" if package.url else "",
                 preinstalled[name, package.version].note if package.version else "version unknown, left out"]
        if any(notes):
            result.not_checked[name] = "; ".join(note for note in notes if note)
    with tempfile.TemporaryDirectory(prefix=f"colab-{snapshot.label}-{kit}-") as folder:
        env = FakeEnv(Path(folder))
        for name, version in versions.items():
            meta, stand_in = preinstalled[name, version].meta, preinstalled[name, version].stand_in
            env.add(name, version, satisfied_only(meta, versions) if meta and stand_in else meta)
        original = dict(env.entries)
        touched: list[str] = []
        for number, step in enumerate(colab_install_plan(T4, kit, installed=versions), 1):
            changes, error = dry_run(uv, env, snapshot.python, step)
            result.steps.append(f"step {number} ({' '.join(step.uv_args())}): "
                                + (f"FAILED: {error}" if error else f"{len(changes)} changes"))
            if error:
                result.resolved, result.error = False, error
                break
            lookups = lookup_all(index, [(name, version) for sign, name, version in changes if sign == "+"],
                                 snapshot.python, pool)
            for (name, _), found in lookups.items():
                result.downloads[name] = result.downloads.get(name, 0) + (found.download.size if found.download else 0)
                if found.note:
                    result.not_checked[name] = found.note
            env.apply(changes, lookups)
            touched.extend(name for sign, name, _ in changes if sign == "+")
        final = env.entries
    for name in dict.fromkeys(touched):
        if name in original:
            result.changed[name] = (original[name].version, final[name].version)
        else:
            result.added[name] = final[name].version
    result.restart = any(name in result.changed for name in RESTART_IF_CHANGED)
    before = find_breaks(original, markers)
    result.already_broken = len(before)
    stack = dependency_closure(touched, final, markers)  # our stack: what the plan installed, and what that needs
    result.conflicts, result.accepted, result.elsewhere = classify_breaks(before, find_breaks(final, markers), stack)
    result.seconds = time.monotonic() - started
    return result


def format_report(result: Rehearsal) -> str:
    """The human-readable report of one rehearsal: steps, a table of changes, the breaks."""
    lines = [f"== {result.snapshot} (Python {result.python}), kit {result.kit} ({result.seconds:.1f} s)",
             *(f"  {step}" for step in result.steps)]
    rows = [(name, before, after) for name, (before, after) in result.changed.items()]
    rows += [(name, "-", after) for name, after in result.added.items()]
    if rows:
        width = max(len(row[0]) for row in rows) + 2
        lines.append(f"  {'package':{width}}{'before':18}{'after':18}download")
        lines += [f"  {name:{width}}{before:18}{after:18}{result.downloads.get(name, 0) / 1e6:7.1f} MB"
                  for name, before, after in sorted(rows)]
    lines += [f"  CONFLICT: {item.describe()}" for item in result.conflicts]
    lines += [f"  accepted: {item.describe()} ({why})" for item, why in result.accepted]
    lines += [f"  elsewhere: {item.describe()}" for item in result.elsewhere]
    lines.append(f"  requirements already broken in the snapshot (not counted): {result.already_broken}")
    reasons: dict[str, list[str]] = {}
    for name, note in sorted(result.not_checked.items()):
        reasons.setdefault(re.sub(r"(https?|git\+\w+|file)://[^\s;]+", "a URL", note), []).append(name)
    lines += [f"  not checked ({reason}): {', '.join(names)}" for reason, names in sorted(reasons.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Rehearse every chosen snapshot and kit; print the report; 1 if a plan fails or conflicts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshot", action="append", type=Path, help="a snapshot folder (repeatable)")
    parser.add_argument("--kit", action="append", choices=["full", "light"], help="a kit (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    folders = args.snapshot or default_snapshots()
    if not folders:
        raise SystemExit("no snapshots found: pass --snapshot DIR or set COLAB_SNAPSHOTS")
    snapshots = [load_snapshot(folder) for folder in folders]
    kits = args.kit or ["full", "light"]
    uv = uv_command()
    index = Index()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        preinstalled = [lookup_all(index, [(package.name, package.version) for package in snapshot.packages.values()
                                           if package.version], snapshot.python, pool) for snapshot in snapshots]
        prefetched = time.monotonic()
        jobs = [(snapshot, lookups, kit) for snapshot, lookups in zip(snapshots, preinstalled, strict=True)
                for kit in kits]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as runner:
            results = list(runner.map(lambda job: rehearse(job[0], job[2], index, uv, pool, job[1]), jobs))
    for result in results:
        print(format_report(result), end="\n\n")
    for result in results:
        print(result.summary())
    finished = time.monotonic()
    print(f"time: {finished - started:.1f} s ({prefetched - started:.1f} s metadata of the preinstalled "
          f"packages, {finished - prefetched:.1f} s plans; {index.requests} index requests, cache {CACHE_DIR})")
    seen = {(item.requirer, item.required) for result in results for item, _ in result.accepted}
    if "full" in kits and set(ACCEPTED_BREAKS) - seen:
        print(f"accepted breaks that no rehearsal showed (stale?): {sorted(set(ACCEPTED_BREAKS) - seen)}")
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=1))
    return int(any(not result.resolved or result.conflicts for result in results))


if __name__ == "__main__":
    sys.exit(main())
