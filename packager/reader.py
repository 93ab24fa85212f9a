"""Read a segment's sample bytes from storage: straight into place for fMP4, as buffers for TS.

Every read names the version of the file (its ETag) the index was built from, so a file replaced
mid-request fails cleanly instead of yielding the new file's bytes cut at the old file's offsets.
"""

from __future__ import annotations

from backends.storage import ObjectInfo, Storage
from packager.index import MediaIndex
from packager.mux import SegmentBody, fmp4
from packager.samples import SampleSource, scatter_reads, segment_ranges
from packager.segmenter import SegmentPlan


async def fmp4_segment(
    storage: Storage,
    info: ObjectInfo,
    index: MediaIndex,
    plan: SegmentPlan,
    segment: int,
    gap: int,
    overfetch: float = 0.0,
) -> SegmentBody:
    """The fMP4 segment, each sample read once from storage into its final position."""
    where = fmp4.layout(index, plan, segment)
    out = fmp4.prepared(where)
    reads = scatter_reads(where.starts, where.ends, where.targets, gap, memoryview(out), overfetch)
    await storage.read_into(info.path, reads, info.etag)
    return SegmentBody([out], where.size)


async def samples(
    storage: Storage,
    info: ObjectInfo,
    index: MediaIndex,
    plan: SegmentPlan,
    segment: int,
    gap: int,
    overfetch: float = 0.0,
) -> SampleSource:
    """The segment's sample bytes as read buffers, for writers that need per-sample work (TS)."""
    ranges = segment_ranges(index, plan, segment, gap, overfetch)
    return SampleSource(ranges, await storage.read_ranges(info.path, ranges, info.etag))
