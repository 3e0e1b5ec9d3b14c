"""Blocks: fixed-size, time-stamped pieces of a third-octave archive, and the framer that cuts them.

Every reader turns its format into rows of levels (one row per frame, optionally
with a time stamp) and hands them to :class:`_Framer`, which applies the choices
below, the same way for every format:

**Grid.** Frames sit on a regular grid of ``band_spec.frame_period`` seconds. For a
time-stamped source, each row's slot is the previous row's slot plus
``round(dt / frame_period)``: jitter under half a period is absorbed and a slow clock
drift never creates gaps. A block's ``start`` is the time stamp of its first stored
frame minus that frame's offset in the block (extrapolated from the last stored
frame when the block holds none), so times stay honest over long archives.

**Blocks.** A block holds ``block_frames`` frames (``BlockOptions.block_seconds``
rounded to whole transcoder chunks, e.g. 600 s = 4800 frames of 125 ms) and never
spans two segments (clips, or the pieces a ``"split"`` creates). The last block of
a segment is shorter; it is padded with gap frames up to a whole chunk, so every
block is a whole number of chunks (``frames_per_chunk``). Memory is bounded by one
block plus one read batch, whatever the archive length.

**Gaps** (``BlockOptions.gaps``): a time jump of ``k`` periods (``k >= 2``) means
``k - 1`` missing frames; a row holding NaN or +-Inf in any band is a bad row, and so
is a row with a level more than :data:`~spectral_transcoder.pinv.MAX_LEVEL_ABOVE_OFFSET`
(300) dB above the band spec's ``db_offset`` once the level reference is applied: no
sound is that loud, such a value is a "no data" sentinel (e.g. 999) or damage, and the
transcoders cannot take it. Those rows are counted in :class:`ReadStats`
(``out_of_range_rows``, with the first one's row and time in ``first_out_of_range``).

- ``"mask"`` (default): missing frames and bad rows become gap frames, ``valid=False``
  with NaN levels, kept in place so that later frames keep their position and the
  downstream step decides (e.g. skip chunks that are not fully valid). A jump longer
  than ``max_mask_gap_s`` (default 60 s) starts a new segment instead, so that a
  sensor offline for a month yields no month of empty blocks.
- ``"split"``: a gap or a bad row ends the segment; the next stored frame starts a
  new one (bad rows are left out). Blocks then hold valid frames only (but for the
  end padding).
- ``"error"``: raise :class:`ArchiveError` naming the file, row and time.

Whatever the mode, the first block of a segment that follows another one of the same
source says how long the hole before it is (:attr:`Block.gap_before_s`: from the end of
the previous segment's last frame to this block's first one), so that an outage is
never mistaken for the end of the data.

**Time order.** A row earlier than the previous one is an error (always). Two rows
in the same slot (``dt < frame_period / 2``) are duplicates: an error by default,
or with ``duplicates="drop"`` the first is kept and the count is recorded in
``Block.dropped_duplicates`` and the reader's :class:`ReadStats`.

**Level reference** (``BlockOptions.reference``), recorded in every block as a
:class:`LevelReference` (output levels = stored levels + ``offset_db``):

- ``"dBFS"`` (default): the stored levels are used as they are (dB re full scale for
  audio analysed by this package);
- ``"SPL"``: the stored levels are calibrated dB SPL; ``spl_offset`` (the SPL that
  corresponds to 0 dBFS, e.g. 94 or 120 dB, the user's calibration) is subtracted;
- ``"auto"``: imitates the peak normalisation the transcoders were trained with
  (each training file scaled to max |x| = 1): ``offset_db = auto_target_db - P``,
  where ``P`` is the ``auto_percentile`` (99 by default) of the per-frame broadband
  level ``10 log10 sum_b 10^(L_b / 10)`` over the first ``auto_window_s`` seconds of
  the source (None = the whole source, read in a first pass). ``P`` is computed
  to 0.01 dB from a fixed histogram, so memory stays bounded. The offset is per
  source; compute one with :func:`auto_offset` and pass it as ``"SPL"`` to share it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InvalidInputError
from ..pinv import MAX_LEVEL_ABOVE_OFFSET
from ..specs import BandSpec

__all__ = [
    "ArchiveError",
    "Block",
    "BlockOptions",
    "BlockPosition",
    "LevelReference",
    "ReadStats",
    "to_datetime64",
]

NS_PER_S = 1_000_000_000
_EPOCH = np.datetime64(0, "ns")


class ArchiveError(InvalidInputError):
    """An archive file is unreadable, corrupt, or breaks a rule (order, band count...).

    ``path`` is the file and ``position`` says where (row, clip, time), when known.
    """

    def __init__(self, path: str, position: str | None, problem: str):
        self.path = str(path)
        self.position = position
        self.problem = problem
        where = f"{self.path}" + (f", {position}" if position else "")
        super().__init__(f"{where}: {problem}")


# ----------------------------------------------------------------------- records
@dataclass(frozen=True)
class LevelReference:
    """How a block's levels were referenced: ``levels = stored + offset_db``."""

    mode: Literal["dBFS", "SPL", "auto"]
    offset_db: float
    """dB added to every stored level."""
    spl_offset: float | None = None
    """``"SPL"``: the user's calibration (dB SPL at 0 dBFS); ``offset_db = -spl_offset``."""
    percentile: float | None = None
    """``"auto"``: percentile of the per-frame broadband level that is mapped to ``target_db``."""
    target_db: float | None = None
    window_s: float | None = None
    """``"auto"``: seconds from the start of the source used (None = all of it)."""
    measured_db: float | None = None
    """``"auto"``: the measured percentile of the stored broadband level (dB as stored)."""
    n_frames_measured: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BlockPosition:
    """Where a block comes from in its source. ``(source, index)`` identifies a block."""

    index: int
    """Block number within the source, from 0; deterministic for given read options."""
    segment: int
    """Segment number within the source: a clip, or a piece between two splits."""
    frame_start: int
    """First frame of the block, counted from the start of its segment."""
    frame_stop: int
    """One past the last frame holding data or a masked gap (the end padding excluded)."""
    row_start: int
    """First source row (frame index for arrays and audio) stored in the block."""
    row_stop: int
    """One past the last source row stored in the block."""
    clip: int | None = None
    """Clip index for (clips, frames, bands) sources, else None."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Block:
    """A fixed-size piece of one source: levels on a regular time grid, with gaps masked.

    ``levels`` is (frames, n_bands) float32 dB (``stored + level_reference.offset_db``),
    time-major, frame ``i`` starting at ``start + i * frame_period``; ``frames`` is a
    whole number of ``band_spec.frames_per_chunk``. Gap frames (missing, bad rows,
    end padding) have ``valid[i] = False`` and NaN levels. Both arrays are read-only.
    """

    source: str
    """File path (or the id given by the user); with ``position.index``, the block's key."""
    sensor: str
    start: np.datetime64
    """UTC time of frame 0, ``datetime64[ns]``."""
    frame_period: float
    """Seconds between frames."""
    levels: np.ndarray
    band_spec: BandSpec
    valid: np.ndarray
    """(frames,) bool: False for gap frames."""
    position: BlockPosition
    level_reference: LevelReference
    dropped_duplicates: int = 0
    """Duplicate rows dropped inside this block (``duplicates="drop"``)."""
    gap_before_s: float = 0.0
    """Seconds with no data right before this block: set on the first block of a segment
    that follows another segment of the same source (a jump longer than ``max_mask_gap_s``,
    or any gap or bad row under ``gaps="split"``), from the end of the previous segment's
    last frame to this block's ``start``; 0 otherwise."""

    @property
    def n_frames(self) -> int:
        return int(self.levels.shape[0])

    @property
    def n_valid(self) -> int:
        return int(np.count_nonzero(self.valid))

    @property
    def duration(self) -> float:
        """Seconds covered by the block's frames, padding included."""
        return self.n_frames * self.frame_period

    @property
    def data_seconds(self) -> float:
        """Seconds of valid frames (what counts as processed audio time)."""
        return self.n_valid * self.frame_period

    @property
    def key(self) -> tuple[str, int]:
        return (self.source, self.position.index)

    def frame_times(self) -> np.ndarray:
        """UTC start time of every frame, (frames,) ``datetime64[ns]``."""
        offs = np.rint(np.arange(self.n_frames) * self.frame_period * NS_PER_S).astype(np.int64)
        times: np.ndarray = self.start + offs.astype("timedelta64[ns]")
        return times

    def chunk_valid(self) -> np.ndarray:
        """(frames // frames_per_chunk,) bool: True where every frame of the chunk is valid."""
        fpc = self.band_spec.frames_per_chunk
        return np.asarray(self.valid.reshape(-1, fpc).all(axis=1))


@dataclass
class ReadStats:
    """What a reader met while reading one source (filled during iteration)."""

    rows: int = 0
    """Rows (frames) read from the file."""
    frames: int = 0
    """Frames placed in blocks (stored rows + masked gap frames), end padding excluded."""
    gap_frames: int = 0
    """Missing frames masked (``gaps="mask"``)."""
    bad_rows: int = 0
    """Rows holding NaN, +-Inf or an out-of-range level (masked, or left out under ``"split"``)."""
    out_of_range_rows: int = 0
    """Of the bad rows, those with a level beyond any sound (module docstring), e.g. a 999 sentinel."""
    first_out_of_range: str | None = None
    """Where the first out-of-range row is: ``"row R (TIME): V dB in band B"``."""
    gaps: int = 0
    """Time jumps longer than one frame period."""
    dropped_duplicates: int = 0
    segments: int = 0
    blocks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------- options
_GAPS = ("mask", "split", "error")
_DUPLICATES = ("error", "drop")
_REFERENCES = ("dBFS", "SPL", "auto")


@dataclass(frozen=True)
class BlockOptions:
    """Options shared by every reader (pass them as keyword arguments to any ``read_*``).

    See the module docstring for what each choice does.
    """

    block_seconds: float = 600.0
    """Block length in seconds, rounded to whole transcoder chunks (at least one)."""
    gaps: Literal["mask", "split", "error"] = "mask"
    max_mask_gap_s: float | None = 60.0
    """``gaps="mask"``: longer jumps start a new segment (None = mask any gap)."""
    duplicates: Literal["error", "drop"] = "error"
    reference: Literal["dBFS", "SPL", "auto"] = "dBFS"
    spl_offset: float | None = None
    """``reference="SPL"``: dB SPL corresponding to 0 dBFS (subtracted from the levels)."""
    auto_percentile: float = 99.0
    auto_target_db: float = 0.0
    auto_window_s: float | None = None
    """``reference="auto"``: seconds from the start measured (None = the whole source)."""
    batch_rows: int = 65536
    """Rows read from the file at a time (memory per read batch)."""

    def __post_init__(self) -> None:
        def real(name: str, v: object, *, positive: bool = False, allow_none: bool = False) -> None:
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                raise InvalidInputError(f"{name} must be a finite number, got {v!r}")
            if positive and v <= 0:
                raise InvalidInputError(f"{name} must be > 0, got {v!r}")

        real("block_seconds", self.block_seconds, positive=True)
        if self.gaps not in _GAPS:
            raise InvalidInputError(f"gaps must be one of {_GAPS}, got {self.gaps!r}")
        real("max_mask_gap_s", self.max_mask_gap_s, positive=True, allow_none=True)
        if self.duplicates not in _DUPLICATES:
            raise InvalidInputError(f"duplicates must be one of {_DUPLICATES}, got {self.duplicates!r}")
        if self.reference not in _REFERENCES:
            raise InvalidInputError(f"reference must be one of {_REFERENCES}, got {self.reference!r}")
        if self.reference == "SPL":
            if self.spl_offset is None:
                raise InvalidInputError(
                    'reference="SPL" needs spl_offset: the dB SPL that corresponds to 0 dBFS (your calibration)'
                )
            real("spl_offset", self.spl_offset)
        elif self.spl_offset is not None:
            raise InvalidInputError(f'spl_offset is only used with reference="SPL", not {self.reference!r}')
        real("auto_percentile", self.auto_percentile)
        if not 0 < self.auto_percentile <= 100:
            raise InvalidInputError(f"auto_percentile must be in (0, 100], got {self.auto_percentile!r}")
        real("auto_target_db", self.auto_target_db)
        real("auto_window_s", self.auto_window_s, positive=True, allow_none=True)
        if (
            isinstance(self.batch_rows, bool)
            or not isinstance(self.batch_rows, numbers.Integral)
            or self.batch_rows < 1
        ):
            raise InvalidInputError(f"batch_rows must be an integer >= 1, got {self.batch_rows!r}")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any], where: str = "") -> BlockOptions:
        """Build from keyword arguments; an unknown name is an error listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InvalidInputError(
                f"{where}unknown option(s) {unknown}; valid reader options: {sorted(names)}"
                " (plus the reader's own arguments)"
            )
        return cls(**options)

    def block_frames(self, spec: BandSpec) -> int:
        chunks = max(1, int(round(self.block_seconds / spec.chunk_duration)))
        return chunks * spec.frames_per_chunk

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The options that change the blocks (``batch_rows`` only changes memory use)."""
        d = self.to_dict()
        d.pop("batch_rows")
        return d


# ---------------------------------------------------------------------- time helpers
def to_datetime64(value: object, name: str = "start") -> np.datetime64:
    """UTC ``datetime64[ns]`` from a datetime64, a datetime (naive = UTC), an ISO 8601
    string (a zone offset is honoured, none = UTC) or epoch seconds."""
    if isinstance(value, np.datetime64):
        t: np.datetime64 = value.astype("datetime64[ns]")
        return t
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return np.datetime64(value, "ns")
    if isinstance(value, (str, bytes)):
        import pyarrow as pa

        text = (value.decode() if isinstance(value, bytes) else value).strip()
        ns: int | None = None
        for tz in ("UTC", None):  # with a zone offset, else taken as UTC
            try:
                ns = pa.array([text]).cast(pa.timestamp("ns", tz=tz)).cast(pa.int64())[0].as_py()
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        if ns is None:
            raise InvalidInputError(f"{name}: cannot parse {text!r} as an ISO 8601 time")
        return np.datetime64(ns, "ns")
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
        return np.datetime64(int(round(float(value) * NS_PER_S)), "ns")
    raise InvalidInputError(
        f"{name} must be a datetime, numpy.datetime64, ISO 8601 string or epoch seconds, got {value!r}"
    )


def _ns(t: np.datetime64) -> int:
    return int(t.astype("datetime64[ns]").astype(np.int64))


def _fmt_ns(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns")) + "Z"


# --------------------------------------------------------------- level reference
_HIST_LO, _HIST_STEP, _HIST_N = -400.0, 0.01, 80001


def broadband_db(levels: np.ndarray) -> np.ndarray:
    """Per-frame broadband level ``10 log10 sum_b 10^(L_b/10)`` (float64), (..., frames)."""
    lv = np.asarray(levels, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # NaN/Inf rows give NaN/Inf
        m = np.max(lv, axis=-1, keepdims=True)  # factor out the max: no overflow at any level
        m = np.where(np.isfinite(m), m, 0.0)
        db: np.ndarray = m[..., 0] + 10.0 * np.log10(np.sum(10.0 ** ((lv - m) / 10.0), axis=-1))
        return db


class _PercentileHistogram:
    """Streaming percentile to 0.01 dB in bounded memory (a fixed 80 001-bin histogram)."""

    def __init__(self) -> None:
        self.counts = np.zeros(_HIST_N, dtype=np.int64)
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        v = values[np.isfinite(values)]
        if v.size:
            idx = np.clip(np.rint((v - _HIST_LO) / _HIST_STEP), 0, _HIST_N - 1).astype(np.int64)
            self.counts += np.bincount(idx, minlength=_HIST_N)
            self.n += int(v.size)

    def percentile(self, q: float) -> float:
        # the smallest v with #(x <= v) >= q% of n (numpy's "inverted_cdf"), to half a bin
        need = max(1, int(math.ceil(q / 100.0 * self.n)))
        i = int(np.searchsorted(np.cumsum(self.counts), need))
        return _HIST_LO + i * _HIST_STEP


def make_reference(
    opts: BlockOptions, measure: Iterator[tuple[np.ndarray, np.ndarray]] | None = None, where: str = ""
) -> LevelReference:
    """Build the :class:`LevelReference` for ``opts``. For ``"auto"``, ``measure`` yields
    ``(levels (n, bands), seconds since the source start of each row)`` batches of the
    file ``where``."""
    if opts.reference == "dBFS":
        return LevelReference(mode="dBFS", offset_db=0.0)
    if opts.reference == "SPL":
        assert opts.spl_offset is not None  # BlockOptions checks it
        return LevelReference(mode="SPL", offset_db=-float(opts.spl_offset), spl_offset=float(opts.spl_offset))
    hist = _PercentileHistogram()
    assert measure is not None
    for levels, t_s in measure:
        bb = broadband_db(levels)
        if opts.auto_window_s is not None:
            bb = bb[np.asarray(t_s) < opts.auto_window_s]
        hist.add(bb)
    if hist.n == 0:
        raise ArchiveError(where, None, 'reference="auto": no valid frame to measure a level on')
    p = hist.percentile(opts.auto_percentile)
    return LevelReference(
        mode="auto",
        offset_db=round(opts.auto_target_db - p, 6),
        percentile=float(opts.auto_percentile),
        target_db=float(opts.auto_target_db),
        window_s=opts.auto_window_s,
        measured_db=round(p, 6),
        n_frames_measured=hist.n,
    )


# --------------------------------------------------------------------- the framer
class _Framer:
    """Turns rows of levels into :class:`Block` objects (see the module docstring).

    Feed it rows in file order with :meth:`push` (with time stamps, or without for
    sources on an implicit grid), call :meth:`new_segment` at a clip boundary and
    :meth:`finish` at the end; each is a generator of the blocks completed.
    """

    def __init__(
        self,
        *,
        path: str,
        source: str,
        sensor: str,
        spec: BandSpec,
        opts: BlockOptions,
        reference: LevelReference,
        stats: ReadStats,
    ):
        self.path, self.source, self.sensor, self.spec, self.opts = path, source, sensor, spec, opts
        self.reference, self.stats = reference, stats
        self.period_ns = spec.frame_period * NS_PER_S
        self.B = opts.block_frames(spec)
        self.offset = np.float32(reference.offset_db)
        self.max_level = np.float32(spec.db_offset + MAX_LEVEL_ABOVE_OFFSET)  # beyond any sound (docstring)
        self.prev_end: int | None = None  # ns: end of the previous segment's last stored frame
        self.gap_before_ns = 0  # the hole before the current segment (for its first block)
        self.max_gap_frames = math.inf if opts.max_mask_gap_s is None else opts.max_mask_gap_s / spec.frame_period
        self.block_index = 0
        self.segment = -1
        self.clip: int | None = None
        self.untimed_start = 0  # ns, start of the next untimed segment
        self.in_segment = False
        self.last_frame = -1  # segment frame of the last stored row
        self.t_prev = 0  # its time (ns)
        self.prev_bad = False  # the previous row was bad ("split")
        self.untimed_next = 0  # index of the next row of an untimed segment (clip)
        self.last_frame_before, self.t_before, self.next_stored_row = -1, 0, 0

    # ---------------------------------------------------------------- segments
    def new_segment(self, start: np.datetime64 | int | None = None, clip: int | None = None) -> Iterator[Block]:
        """End the current segment; the next rows start a new one, for an untimed source at ``start``."""
        yield from self._close_segment()
        self.clip = clip
        self.untimed_next = 0
        self.prev_bad = False
        if start is not None:
            self.untimed_start = start if isinstance(start, int) else _ns(start)

    def finish(self) -> Iterator[Block]:
        yield from self._close_segment()

    def _open_segment(self, t_first: int) -> None:
        """Start a segment whose first stored row is at ``t_first`` (ns)."""
        self.segment += 1
        self.stats.segments += 1
        self.in_segment = True
        self.last_frame = -1
        gap = 0 if self.prev_end is None else t_first - self.prev_end
        self.gap_before_ns = gap if gap >= self.period_ns / 2 else 0  # jitter is no hole
        self._new_buffer(0)

    def _close_segment(self) -> Iterator[Block]:
        if self.in_segment:
            self.in_segment = False
            self.stats.frames += self.last_frame + 1
            if self.last_frame >= 0:
                self.prev_end = int(self.t_prev + round(self.period_ns))
            n = self.last_frame + 1 - self.f0
            if n > 0:
                yield self._emit(n)

    def _new_buffer(self, f0: int) -> None:
        self.buf = np.full((self.B, self.spec.n_bands), np.nan, dtype=np.float32)
        self.buf_valid = np.zeros(self.B, dtype=bool)
        self.f0 = f0
        self.first: tuple[int, int] | None = None  # (frame, time) of the first stored row
        self.rows = (-1, -1)
        self.dups = 0

    def _emit(self, n: int) -> Block:
        fpc = self.spec.frames_per_chunk
        n_pad = -(-n // fpc) * fpc
        levels, valid = self.buf[:n_pad], self.buf_valid[:n_pad]
        levels.setflags(write=False)
        valid.setflags(write=False)
        # start = time of a stored frame minus its offset (the last stored one before
        # the block when the block holds only masked gap frames)
        f, t = self.first if self.first is not None else (self.last_frame_before, self.t_before)
        start = int(t - round((f - self.f0) * self.period_ns))
        r0, r1 = self.rows if self.first is not None else (self.next_stored_row, self.next_stored_row - 1)
        pos = BlockPosition(
            index=self.block_index,
            segment=self.segment,
            frame_start=self.f0,
            frame_stop=self.f0 + n,
            row_start=r0,
            row_stop=r1 + 1,
            clip=self.clip,
        )
        self.block_index += 1
        self.stats.blocks += 1
        block = Block(
            source=self.source,
            sensor=self.sensor,
            start=np.datetime64(start, "ns"),
            frame_period=self.spec.frame_period,
            levels=levels,
            band_spec=self.spec,
            valid=valid,
            position=pos,
            level_reference=self.reference,
            dropped_duplicates=self.dups,
            gap_before_s=self.gap_before_ns / NS_PER_S if self.f0 == 0 else 0.0,
        )
        self._new_buffer(self.f0 + self.B)
        return block

    def _place(
        self,
        frames: np.ndarray,
        data: np.ndarray,
        ok: np.ndarray,
        rows: np.ndarray,
        times: np.ndarray,
        dups: np.ndarray,
    ) -> Iterator[Block]:
        """Store rows at the (increasing) segment frames ``frames``; emit each block completed."""
        i, n = 0, len(frames)
        while i < n:
            end = self.f0 + self.B
            j = int(np.searchsorted(frames, end, side="left"))
            if j > i:
                loc = frames[i:j] - self.f0
                self.buf[loc] = data[i:j]
                self.buf_valid[loc] = ok[i:j]
                if self.first is None:
                    self.first = (int(frames[i]), int(times[i]))
                    self.rows = (int(rows[i]), int(rows[i]))
                self.rows = (self.rows[0], int(rows[j - 1]))
                self.dups += int(dups[i:j].sum())
                self.last_frame, self.t_prev = int(frames[j - 1]), int(times[j - 1])
            if j < n:  # later rows lie beyond this block: it is complete
                self.last_frame_before, self.t_before = self.last_frame, self.t_prev
                self.next_stored_row = int(rows[j])
                yield self._emit(self.B)
            i = j

    # -------------------------------------------------------------------- rows
    def push(self, levels: np.ndarray, row0: int, times: np.ndarray | None = None) -> Iterator[Block]:
        """Add file rows ``row0 .. row0 + n``: ``levels`` (n, n_bands) as stored; ``times``
        (n,) int64 ns since the epoch, or None for an implicit grid (consecutive frames
        from the segment start given to :meth:`new_segment`).

        A row that breaks a rule raises :class:`ArchiveError` after the rows before it
        are placed, so the blocks given before an error do not depend on the batch size.
        """
        n = int(levels.shape[0])
        if n == 0:
            return
        opts, P = self.opts, self.period_ns
        rows = np.arange(row0, row0 + n, dtype=np.int64)
        lv = np.asarray(levels, dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN compares False: those rows are bad anyway
            over = np.any(lv + self.offset > self.max_level, axis=1)
        ok = np.isfinite(lv).all(axis=1) & ~over
        ok_last = bool(ok[-1])
        n_bad = n - int(np.count_nonzero(ok))

        def fail(k: int, problem: str, t: np.ndarray | None = times) -> Iterator[Block]:
            where = self._where(int(rows[k]), t, k)
            r = int(rows[k]) - row0  # rows before the offending one go first
            if r > 0:
                yield from self.push(levels[:r], row0, None if times is None else times[:r])
            raise ArchiveError(self.path, where, problem)

        first_over = None  # (index, "V dB in band B") of the first out-of-range row
        if over.any():
            k = int(np.argmax(over))
            j = int(np.argmax(lv[k] + self.offset > self.max_level))
            first_over = (k, f"{float(lv[k, j]):g} dB in band {j}")
        if n_bad and opts.gaps == "error":
            k = int(np.argmax(~ok))
            if first_over is not None and first_over[0] == k:
                problem = (
                    f"level {first_over[1]} (as stored) is more than {MAX_LEVEL_ABOVE_OFFSET:g} dB above the "
                    f"band spec's db_offset ({self.spec.db_offset:g} dB) after the level reference "
                    f"({self.reference.offset_db:+g} dB): no sound is that loud, is it a 'no data' sentinel? "
                    '(gaps="error"; gaps="mask" masks such rows like NaN rows)'
                )
            else:
                problem = 'row holds NaN or Inf levels (gaps="error"; use gaps="mask" or "split")'
            yield from fail(k, problem)

        # slot step of each row from the previous stored row (1 = the next frame)
        if times is None:
            steps = np.ones(n, dtype=np.int64)
            t = self.untimed_start + np.rint((self.untimed_next + np.arange(n)) * P).astype(np.int64)
        else:
            t = np.asarray(times, dtype=np.int64)
            dt = np.diff(t, prepend=t[0] if not self.in_segment else self.t_prev)
            back = np.flatnonzero(dt < 0)
            if back.size:
                k = int(back[0])
                before = int(t[k - 1]) if k else self.t_prev
                yield from fail(
                    k,
                    f"time stamps go backwards ({_fmt_ns(int(t[k]))} after {_fmt_ns(before)}); sort the archive first",
                )
            steps = ((dt + P / 2) // P).astype(np.int64)

        # segment starts; in "split" mode bad rows are left out and the row after one starts a segment
        starts = np.zeros(n, dtype=bool)
        if not self.in_segment:
            starts[0] = True
        if opts.gaps == "split":
            starts |= np.concatenate([[self.prev_bad], ~ok[:-1]])
            if times is not None:
                starts |= steps >= 2
        else:
            starts |= steps - 1 > self.max_gap_frames
        rows_all, times_all = rows, times
        if opts.gaps == "split" and n_bad:
            lv, ok, rows, t, steps, starts = (a[ok] for a in (lv, ok, rows, t, steps, starts))

        # duplicates: a step of 0 on a row that does not start a segment
        dup = (steps == 0) & ~starts
        if dup.any() and opts.duplicates == "error":
            k = int(np.argmax(dup))
            yield from fail(
                k,
                f"duplicated frame: {_fmt_ns(int(t[k]))} falls in the same "
                f"{self.spec.frame_period:g}-s slot as the previous row "
                '(duplicates="drop" keeps the first)',
                t,
            )
        gap = (steps >= 2) & ~starts & ~dup
        if opts.gaps == "error" and gap.any():
            k = int(np.argmax(gap))
            yield from fail(
                k,
                f"{int(steps[k]) - 1} missing frame(s) before {_fmt_ns(int(t[k]))} "
                '(gaps="error"; use gaps="mask" or "split")',
                t,
            )

        # no error: commit the state
        self.stats.rows += n
        self.stats.bad_rows += n_bad
        if first_over is not None:
            self.stats.out_of_range_rows += int(np.count_nonzero(over))
            if self.stats.first_out_of_range is None:
                k = first_over[0]
                self.stats.first_out_of_range = f"{self._where(int(rows_all[k]), times_all, k)}: {first_over[1]}"
        if times is None:
            self.untimed_next += n
        if opts.gaps == "split":
            self.prev_bad = not ok_last
        dups = np.zeros(len(lv), dtype=np.int64)
        if dup.any():
            keep = ~dup
            owner = np.maximum(np.cumsum(keep)[dup] - 1, 0)  # the kept row each duplicate repeats
            dups = np.bincount(owner, minlength=int(keep.sum()))
            self.stats.dropped_duplicates += int(dup.sum())
            lv, ok, rows, t, steps, starts, gap = (a[keep] for a in (lv, ok, rows, t, steps, starts, gap))
        self.stats.gaps += int(np.count_nonzero(gap)) + int(np.count_nonzero(starts & (steps >= 2)))
        self.stats.gap_frames += 0 if opts.gaps == "split" else int(np.sum(steps[gap] - 1))
        if not len(lv):
            if opts.gaps == "split" and n_bad:  # only bad rows: the segment has ended
                yield from self._close_segment()
            return

        data = np.where(ok[:, None], lv + self.offset, np.float32(np.nan)).astype(np.float32, copy=False)
        cut = [*np.flatnonzero(starts), len(lv)]
        pieces = ([(0, cut[0])] if cut[0] > 0 else []) + list(itertools.pairwise(cut))
        for a, b in pieces:
            st = steps[a:b].copy()
            if starts[a]:
                yield from self._close_segment()
                self._open_segment(int(t[a]))
                st[0] = 0
                base = 0
            else:
                base = self.last_frame
            frames = base + np.cumsum(st)
            yield from self._place(frames, data[a:b], ok[a:b], rows[a:b], t[a:b], dups[a:b])

    def _where(self, row: int, times: np.ndarray | None, k: int) -> str:
        s = f"row {row}"
        if self.clip is not None:
            s = f"clip {self.clip}, frame {row}"
        if times is not None and 0 <= k < len(times):
            s += f" ({_fmt_ns(int(times[k]))})"
        return s
