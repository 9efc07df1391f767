"""
A benchmark's official files, found in --data-dir or downloaded once into a cache, all or nothing. Every reader in
tasks/ gets its folder from benchmark_folder (one archive) or find_or_download (several plain files).

    benchmark_folder(what, folder, data_dir, cache_dir, ...)   data_dir/folder, or cache_dir/folder downloaded once
    missing(candidates, names)               what a --data-dir lacks, for benchmark_folder's message
    find_or_download(name, files, data_dir, cache_dir)         {relative path: local path} of plain files
    fetch_once(cache_dir, folder, build)     cache_dir/folder, built by build(tmp) the first time, atomically
    download(url, dest), download_zip(url, into, name), untar(archive, url, into)
"""
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from http.client import HTTPException

from tqdm import tqdm

from data import DataError


def benchmark_folder(what, folder, data_dir, cache_dir, complete, build, expected, official, env, lacks=None):
    """The folder that holds a benchmark's files, found or downloaded once; every reader in tasks/ uses this.
    With data_dir (offline): data_dir/<folder>, where the official archive unpacks, or data_dir itself. Without:
    cache_dir/<folder> (default $SSMLORA_<env>_CACHE, else ~/.cache/ssmlora/<env>), built by build(tmp) the first
    time (fetch_once: all or nothing). complete(folder): whether it holds every file; expected: those files, for the
    messages; official: the official URLs, for the way to work offline; lacks(candidates), when given, says which
    of those files the nearest candidate folder lacks (the message then names only the missing ones)."""
    if data_dir is not None:
        candidates = (os.path.join(data_dir, folder), data_dir)
        for candidate in candidates:
            if complete(candidate):
                return candidate
        raise DataError(f"{what}: --data-dir {data_dir} lacks {lacks(candidates) if lacks else expected}. Put the "
                        "official files there (as they unpack), or leave --data-dir out to download them into the "
                        "cache.")
    cache_dir = cache_dir or os.environ.get(f"SSMLORA_{env.upper()}_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ssmlora", env)
    final = os.path.join(cache_dir, folder)
    if not complete(final):
        print(f"data: downloading {what} into {cache_dir}")
        try:
            fetch_once(cache_dir, folder, build)
        except DataError as e:
            them = "them" if len(official) > 1 else "it"
            raise DataError(f"Could not get {what}: {e}. Nothing was written to the cache. To work offline, fetch "
                            f"{' + '.join(official)} on a machine with internet, put {them} in a folder and set "
                            f"SSMLORA_{env.upper()}_URL=file:///that/folder; or pass --data-dir with a folder that "
                            f"holds {expected}.") from None
    return final


def missing(candidates, names, prefix="", exists=os.path.isfile):
    """Of names (paths relative to a candidate folder), those lacking in the candidate that holds the most of them,
    comma-separated with prefix before each: what a --data-dir message names, leaving out the files that are there."""
    return ", ".join(prefix + n for n in min(([n for n in names if not exists(os.path.join(c, n))]
                                              for c in candidates), key=len))


def mirror(name, base_url, env, official):
    """The URL of a benchmark file: base_url or $SSMLORA_<env>_URL (a folder that serves every file by its plain
    name) when given, else the official one."""
    base_url = base_url or os.environ.get(f"SSMLORA_{env.upper()}_URL")
    return f"{base_url.rstrip('/')}/{name}" if base_url else official


def fetch_once(cache_dir, folder, build):
    """cache_dir/folder, built the first time by build(tmp), which must create tmp/folder. All or nothing: it is
    built in a temporary folder beside its final place and moved there by one os.replace, so an interrupted run
    leaves nothing half-written, and a later run finds either the whole folder or none."""
    final = os.path.join(cache_dir, folder)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{folder}-partial-", dir=cache_dir)
    try:
        build(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete folder (files removed by hand) is replaced
        os.replace(os.path.join(tmp, folder), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def download(url, dest):
    """Stream url into the file dest with a progress bar; any failure, a short body included, is a DataError."""
    done = total = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
    except (OSError, HTTPException) as e:        # URLError, HTTPError, timeouts, refused connections, IncompleteRead
        raise DataError(f"download of {url} failed ({e})") from None
    if total and done != total:
        raise DataError(f"download of {url} stopped after {done} of {total} bytes")


def untar(archive, url, into):
    """Extract a downloaded .tar.gz; the "data" filter refuses members that would land outside `into` (links,
    absolute paths, ..)."""
    try:
        with tarfile.open(archive, "r:*") as t:
            t.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{url} is not a valid .tar.gz archive ({e})") from None


def download_zip(url, into, name):
    """Download the zip at url as into/name and extract it into `into`, after checking every member's CRC."""
    archive = os.path.join(into, name)
    download(url, archive)
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()                      # reads every member and checks its CRC
            if bad is not None:
                raise DataError(f"{url}: member {bad} is corrupt")
            z.extractall(into)                     # extractall keeps member paths inside `into`
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{url} is not a valid zip archive ({e})") from None


def find_or_download(name, files, data_dir=None, cache_dir=None, base_url=None, also=None):
    """{relative path: local path} of a benchmark's files (files: {relative path: official url}), through
    benchmark_folder: in data_dir (or data_dir/name), else in the cache, downloaded there once. also: {relative path:
    another place the file may have in data_dir} (NarrativeQA's two CSVs side by side, besides the repository's
    layout)."""
    env, also = name.lower(), also or {}
    urls = {f: mirror(os.path.basename(f), base_url, env, url) for f, url in files.items()}  # a mirror: plain names

    def found(folder):  # {file: its local path, or None}
        places = lambda f: [os.path.join(folder, p) for p in (f, also.get(f)) if p]  # noqa: E731
        return {f: next((p for p in places(f) if os.path.isfile(p)), None) for f in files}

    def named(fs):  # "a, b (or b's other place)"
        return ", ".join(f + (f" (or {also[f]})" if f in also else "") for f in fs)

    def lacks(candidates):  # the files the candidate holding the most of them lacks
        return named(min(([f for f, p in found(c).items() if p is None] for c in candidates), key=len))

    def build(tmp):
        for f, url in urls.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, name, f)), exist_ok=True)
            download(url, os.path.join(tmp, name, f))
    folder = benchmark_folder(name, name, data_dir, cache_dir, lambda d: all(found(d).values()), build,
                              named(files), list(files.values()), env, lacks)
    return found(folder)
