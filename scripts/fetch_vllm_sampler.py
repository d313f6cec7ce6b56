"""Fetch vLLM 0.33.0's ``diffusion_gemma_sampler.py`` (one 6.8 kB file of a 336 MB wheel) into
``bench/vllm_diffusion_gemma_sampler.py``, where ``tests/test_vllm.py`` and ``bench/gpu_check.py``
look for it; the path is git-ignored (vLLM's code is not vendored into this repository).

Only the bytes needed are read, with HTTP range requests on the wheel that the package index
lists: the zip's end-of-central-directory record and central directory, then the file's local
header and compressed data. The extracted file must have :data:`SHA256` (the file of the wheel
``vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl``), else nothing is written. Nothing is read
when the file is already there with that hash.

    python scripts/fetch_vllm_sampler.py [--out PATH] [--index URL]

Exit status 0 when the file is in place, 1 (one line on stderr) otherwise: ``scripts/bootstrap.sh``
runs it and only warns on failure (the tests that need the file then skip with the reason).
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import re
import struct
import sys
import urllib.request
import zlib

WHEEL = "vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl"
MEMBER = "vllm/model_executor/models/diffusion_gemma_sampler.py"
SHA256 = "4d0989b3701783584c0d847c47ad6e6450e9484c125dea7b3f221ad34f201499"
INDEX = "https://pypi.org/simple/vllm/"
OUT = pathlib.Path(__file__).resolve().parent.parent / "bench" / "vllm_diffusion_gemma_sampler.py"
TIMEOUT = 60


def _get(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes ``[start, end]`` of ``url`` (``start`` None: the last ``-end`` bytes)."""
    headers = {}
    if end is not None:
        headers["Range"] = f"bytes={start}-{end}" if start is not None else f"bytes=-{end}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT) as r:
        if end is not None and r.status != 206:
            raise OSError(f"{url}: the server ignored the range request (HTTP {r.status})")
        return r.read()


def wheel_url(index: str = INDEX) -> str:
    """The wheel's URL, from the package index's simple page."""
    page = _get(index).decode()
    for href in re.findall(r'href="([^"]+)"', page):
        if href.split("#")[0].endswith("/" + WHEEL):
            return urllib.request.urljoin(index, href.split("#")[0])
    raise OSError(f"{index}: no {WHEEL}")


def extract(url: str, member: str = MEMBER) -> bytes:
    """``member`` of the zip at ``url``, read by range requests."""
    tail = _get(url, None, 65536 + 22)
    eocd = tail.rfind(b"PK\x05\x06")
    if eocd < 0:
        raise OSError(f"{url}: no zip end-of-central-directory record in the last 64 kB")
    size, offset = struct.unpack("<II", tail[eocd + 12 : eocd + 20])
    if offset == 0xFFFFFFFF:  # zip64: the zip64 end record holds the offset
        loc = tail.rfind(b"PK\x06\x07", 0, eocd)
        (z64,) = struct.unpack("<Q", tail[loc + 8 : loc + 16])
        rec = _get(url, z64, z64 + 55)
        size, offset = struct.unpack("<QQ", rec[40:56])
    cd = _get(url, offset, offset + size - 1)
    name = member.encode()
    i = 0
    while (i := cd.find(b"PK\x01\x02", i)) >= 0:
        method, _, _, crc, csize, usize, nlen, xlen, clen = struct.unpack("<HHHIIIHHH", cd[i + 10 : i + 34])
        (local,) = struct.unpack("<I", cd[i + 42 : i + 46])
        if cd[i + 46 : i + 46 + nlen] == name:
            head = _get(url, local, local + 29)
            hn, hx = struct.unpack("<HH", head[26:30])
            start = local + 30 + hn + hx
            data = _get(url, start, start + csize - 1)
            out = zlib.decompress(data, -15) if method == 8 else data
            if method not in (0, 8) or len(out) != usize or zlib.crc32(out) != crc:
                raise OSError(f"{url}: {member}: unreadable entry (method {method}, size or CRC mismatch)")
            return out
        i += 46 + nlen + xlen + clen
    raise OSError(f"{url}: no {member}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    ap.add_argument("--index", default=INDEX)
    args = ap.parse_args(argv)
    if args.out.is_file() and hashlib.sha256(args.out.read_bytes()).hexdigest() == SHA256:
        print(f"fetch_vllm_sampler: {args.out} is in place")
        return 0
    try:
        data = extract(wheel_url(args.index))
    except (OSError, ValueError, zlib.error) as e:
        print(f"fetch_vllm_sampler: could not fetch {MEMBER} of {WHEEL}: {e}", file=sys.stderr)
        return 1
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        print(f"fetch_vllm_sampler: {MEMBER} has sha256 {digest}, expected {SHA256}; not written", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"fetch_vllm_sampler: wrote {args.out} ({len(data)} bytes, sha256 {SHA256[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
