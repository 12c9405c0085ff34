"""Getting a verified artifact onto the device with the fewest bytes: delta, compressed or raw.

Owns the choice and the three paths. The delta path (chunks of held models + chunk patches + raw
ranges, `delta.py`; the signed manifest is binary format 2, or an older release's JSON format 1) is
taken when the signed manifest says it costs no more than the full download; the full download
is the xz-compressed artifact when the release ships one (a signed TUF target of its own,
decompressed in a stream) and the raw artifact otherwise. Whatever the path,
the result must hash to the signed artifact or it is discarded. Any failure of the delta path
(a short or failed Range read, a missing or corrupt patch, a rebuild that does not hash, a local
read error) falls back to the full download at once, and the delta is not tried again for that
artifact by this process: a broken mirror of patches never blocks an update whose full artifact
is intact. Small signed files (manifest, golden set) are fetched and cached here too.
"""

from __future__ import annotations

import lzma
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import IntegrityError, TransportError
from agent.ota.delta import Chunk, ChunkIndex, parse_manifest, patchable, rebuild
from agent.ota.fetcher import Downloader, sha256_file
from agent.ota.trust import Plan, TargetRef

HeldModels = Callable[[], list[tuple[Path, str]]]


@dataclass
class TransferStats:
    path: str = ""
    fetched: int = 0
    reused: int = 0
    patched: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Transfer:
    def __init__(self, *, downloader: Downloader, downloads: Path, manifests: Path, held: HeldModels) -> None:
        self.downloader = downloader
        self.downloads = downloads
        self.manifests = manifests
        self._held = held
        self.last = TransferStats()
        self._delta_failed: set[str] = set()  # artifacts whose delta path failed: full download only

    def small(self, ref: TargetRef) -> bytes:
        path = self.downloads / f"{ref.sha256}.{ref.path.rsplit('/', 1)[-1]}"
        if not path.exists():
            self.downloader.download(ref.url, path, length=ref.length, sha256=ref.sha256)
        return path.read_bytes()

    def fetch(self, plan: Plan, dest: Path, *, use_delta: bool) -> str:
        """Put the artifact at `dest`; returns how (for the report).

        Raises:
            IntegrityError: the full download does not match the signed target.
            TransportError, HttpStatusError: the repository failed (resume later / terminal on 4xx).
        """
        before = self.downloader.bytes_received
        full_cost = plan.compressed.length if plan.compressed else plan.artifact.length
        detail = ""
        try:
            delta_ok = use_delta and plan.artifact.sha256 not in self._delta_failed
            plan_delta = self._delta_plan(plan) if delta_ok else None
            if plan_delta is not None and plan_delta[2] <= full_cost:
                self._delta(plan, dest, plan_delta[0], plan_delta[1])
                return f"delta fetched_bytes={self.last.fetched} reused_bytes={self.last.reused}"
        except (IntegrityError, TransportError, OSError) as err:
            (dest.with_name(dest.name + ".partial")).unlink(missing_ok=True)
            self._delta_failed.add(plan.artifact.sha256)
            self.last.extra["delta_discarded"] = 1
            detail = f"delta discarded ({type(err).__name__}: {err}); "
        if plan.compressed is not None:
            self._compressed(plan, dest)
            how = "xz"
        else:
            self.downloader.download(
                plan.artifact.url, dest, length=plan.artifact.length, sha256=plan.artifact.sha256
            )
            how = "raw"
        extra = {"delta_discarded": 1} if detail else {}
        self.last = TransferStats(path=how, fetched=self.downloader.bytes_received - before, extra=extra)
        return f"{detail}full {how} download fetched_bytes={self.last.fetched}"

    def _index(self) -> ChunkIndex:
        index = ChunkIndex()
        for path, sha in self._held():
            manifest = self.manifests / f"{sha}.json"
            if manifest.exists() and path.exists():
                try:
                    index.add(
                        path, parse_manifest(manifest.read_bytes(), length=path.stat().st_size, sha256=sha)
                    )
                except IntegrityError:
                    manifest.unlink(missing_ok=True)
        return index

    def _delta_plan(self, plan: Plan) -> tuple[list[Chunk], ChunkIndex, int] | None:
        """(chunks, index, bytes the delta would fetch) or None when no delta is possible."""
        if plan.manifest is None:
            return None
        index = self._index()
        if not len(index):
            return None
        chunks = parse_manifest(
            self.small(plan.manifest), length=plan.artifact.length, sha256=plan.artifact.sha256
        )
        cost = 0
        for c in chunks:
            if index.has(c.sha256):
                continue
            if patchable(c, index):
                cost += 0 if c.patch_inline else c.patch_length  # inline: already in the manifest
            else:
                cost += c.length
        return chunks, index, cost

    def _delta(self, plan: Plan, dest: Path, chunks: list[Chunk], index: ChunkIndex) -> None:
        partial = dest.with_name(dest.name + ".partial")
        before = self.downloader.bytes_received
        targets = plan.artifact.url[: plan.artifact.url.index("/targets/") + len("/targets/")]

        def patch(c: Chunk) -> bytes:
            return self.downloader.fetch_range(f"{targets}patches/{c.patch_file}", 0, c.patch_length)

        def span(offset: int, length: int) -> bytes:
            return self.downloader.fetch_range(plan.artifact.url, offset, length)

        stats = rebuild(chunks, index, span, partial, fetch_patch=patch)
        if sha256_file(partial) != plan.artifact.sha256:
            raise IntegrityError("rebuilt artifact does not hash to the signed target")
        partial.replace(dest)
        self.last = TransferStats(
            "delta", self.downloader.bytes_received - before, stats.reused_bytes, stats.patched_chunks
        )

    def _compressed(self, plan: Plan, dest: Path) -> None:
        assert plan.compressed is not None
        xz = self.downloads / f"{plan.compressed.sha256}.xz"
        if not xz.exists():  # present only after its hash was checked (a crash before decompressing)
            ref = plan.compressed
            self.downloader.download(ref.url, xz, length=ref.length, sha256=ref.sha256)
        partial = dest.with_name(dest.name + ".partial")
        try:
            _decompress(xz, partial, limit=plan.artifact.length)
        except (IntegrityError, lzma.LZMAError) as err:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"compressed artifact refused: {err}") from err
        if sha256_file(partial) != plan.artifact.sha256:
            partial.unlink(missing_ok=True)
            raise IntegrityError("decompressed artifact does not hash to the signed target")
        partial.replace(dest)


def _decompress(src_path: Path, dest: Path, *, limit: int) -> None:
    """Stream-decompress xz into `dest`, never writing more than `limit` bytes.

    Raises:
        IntegrityError: truncated, or expands past `limit`.
        lzma.LZMAError: not valid xz.
    """
    decompressor = lzma.LZMADecompressor()
    written = 0
    with src_path.open("rb") as src, dest.open("wb") as out:
        while not decompressor.eof:
            data = src.read(1 << 16) if decompressor.needs_input else b""
            if decompressor.needs_input and not data:
                raise IntegrityError("truncated")
            block = decompressor.decompress(data, max_length=1 << 20)
            written += len(block)
            if written > limit:
                raise IntegrityError("expands past the signed length")
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
