"""Archive readers: one class per format, all yielding :class:`~.blocks.Block` objects.

Every reader streams its file (Parquet row batches, CSV blocks, HDF5 slices, a
memory-mapped or streamed NPY, soundfile blocks), so memory is bounded by one read
batch plus one block, whatever the archive length. All share the options of
:class:`~.blocks.BlockOptions` (gaps, duplicates, level reference, block length),
passed as keyword arguments, and every problem in a file is an
:class:`~.blocks.ArchiveError` naming the file and the position.

=====================  ===========================================================
format                 reader (``open_archive`` picks it from the extension)
=====================  ===========================================================
``.parquet``, ``.pq``  :class:`ParquetReader`: a time column plus one column per band,
                       or one list column of band values
``.csv``               :class:`CsvReader`: a time column plus one column per band
``.h5``, ``.hdf5``     :class:`Hdf5Reader`: dataset ``fast_125ms`` (clips, frames, bands)
``.npy``, ``.npz``     :class:`ArrayReader`: (clips, frames, bands) or (frames, bands)
``.zip``               :class:`NoiseCaptureReader`: NoiseCapture app exports
``.wav``, ``.flac``..  :class:`AudioReader`: audio analysed on the fly (``third_octave``)
=====================  ===========================================================

Time stamps are UTC: a time column without a zone is taken as UTC; numeric time
columns need ``time_unit`` (``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` since the Unix
epoch). Sources without time stamps (HDF5, NPY, audio) start at ``start`` (or the
file's ``start`` attribute for HDF5), else at the Unix epoch, i.e. times are then
elapsed time; ``describe()["start_known"]`` says which.

The exact schema of every format (column, dataset and attribute names and how they are
found, time stamps, level units and reference, band order, gaps), with an example file
for each, and the output of ``process``: ``docs/archive-formats.md`` in the source tree.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import numpy as np

from .._validation import _outside_stacklevel, check_band_sample_rate, check_min_duration, require_module
from ..errors import InputWarning, InvalidInputError, option, to_cli_language
from ..specs import BandSpec, get_band_spec
from .blocks import (
    NS_PER_S,
    ArchiveError,
    Block,
    BlockOptions,
    LevelReference,
    ReadStats,
    _Framer,
    make_reference,
    to_datetime64,
)

__all__ = [
    "BlockReader",
    "ParquetReader",
    "CsvReader",
    "Hdf5Reader",
    "ArrayReader",
    "NoiseCaptureReader",
    "AudioReader",
    "ArchiveSet",
    "ArchiveFailure",
    "SnapReport",
    "snap_to_grid",
    "open_archive",
    "open_many",
    "auto_offset",
    "nominal_frequencies",
]

#: What a reader's ``_events()`` yields: ``("rows", levels, row0, times_ns | None)``, ``("segment", start_ns, clip)``
#: or ``("error", problem, position)``.
_Event: TypeAlias = tuple[Any, ...]

_TIME_UNITS = {"s": NS_PER_S, "ms": 1_000_000, "us": 1_000, "ns": 1}
_TIME_NAMES = ("timestamp", "time", "datetime", "date_time", "utc", "time_utc", "t")

# Nominal (IEC 61260 / ISO 266 R10) mantissas of base-10 third-octave centres
# 10^(i/10) kHz: the names NoiseCapture gives its bands (leq_100 ... leq_16000).
_R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)


def nominal_frequencies(spec: BandSpec) -> list[float]:
    """Nominal centre frequencies in Hz of a spec's bands (100, 125, 160, ...)."""
    return [_R10[i % 10] * 10.0 ** (3 + i // 10) for i in spec.band_indices.tolist()]


# ----------------------------------------------------------------------- base class
class BlockReader:
    """Blocks of one source file. Iterate it (each iteration re-reads the file).

    Attributes: ``path``, ``source`` (the id in block keys and outputs: the resolved
    path unless given), ``sensor``, ``band_spec``, ``options`` (:class:`BlockOptions`),
    ``stats`` (:class:`ReadStats` of the last iteration) and ``level_reference``
    (computed on first use; ``"auto"`` reads the file once for it).
    """

    format: ClassVar[str] = ""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str | BandSpec,
        sensor: str | None,
        source: str | None,
        options: dict[str, Any],
    ):
        self.path = str(path)
        self.band_spec = get_band_spec(spec)
        self.options = BlockOptions.from_kwargs(options, where=f"{self.path}: ")
        self.source = str(source) if source is not None else str(Path(self.path).resolve())
        self.sensor = str(sensor) if sensor is not None else Path(self.path).stem
        self.stats = ReadStats()
        self._reference: LevelReference | None = None
        self._pos: str | None = None  # where the reader is, for error messages

    # -------------------------------------------------------- to implement
    def _events(self) -> Iterator[_Event]:
        """Yield ``("rows", levels (n, bands), row0, times_ns | None)`` in file order,
        for untimed sources ``("segment", start_ns, clip)`` before each clip, and
        ``("error", problem, position)`` for damage to report once the rest is read."""
        raise NotImplementedError

    def duration_hint(self) -> float | None:
        """Seconds of data in the file, when cheap to know (for progress bars)."""
        return None

    def _extra(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------- common
    def describe(self) -> dict[str, Any]:
        """What was read and how (JSON-able, for output metadata): everything that changes
        the blocks, not the knobs that only change speed or memory."""
        return {
            "format": self.format,
            "source": self.source,
            "sensor": self.sensor,
            "band_spec": self.band_spec.to_dict(),
            "options": self.options.result_dict(),
            **self._extra(),
        }

    def source_paths(self) -> dict[str, str]:
        """Source id -> file path (for the engine's check that an input did not change)."""
        return {self.source: self.path}

    def formats(self) -> set[str]:
        """The formats read (for labels): this reader's."""
        return {self.format}

    def _fail(self, problem: str, position: str | None = None) -> ArchiveError:
        return ArchiveError(self.path, position if position is not None else self._pos, problem)

    def _guard(self, events: Iterator[_Event]) -> Iterator[_Event]:
        """Re-raise any library error (corrupt file, I/O...) as an ArchiveError with the position."""
        try:
            yield from events
        except ArchiveError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # libraries raise many types on corrupt files
            raise self._fail(f"cannot read ({type(exc).__name__}: {exc})") from exc

    @property
    def level_reference(self) -> LevelReference:
        if self._reference is None:
            self._reference = make_reference(self.options, self._measure(), where=self.path)
        return self._reference

    def _measure(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(levels, seconds since the source start) batches for the ``"auto"`` reference."""
        window = self.options.auto_window_s
        t0: int | None = None
        done = 0  # rows of untimed sources so far
        period = self.band_spec.frame_period
        for ev in self._guard(self._events()):
            if ev[0] != "rows":
                continue
            levels, _, times = ev[1], ev[2], ev[3]
            if times is None:
                t_s = (done + np.arange(len(levels))) * period
                done += len(levels)
            else:
                if t0 is None and len(times):
                    t0 = int(times[0])
                t_s = (np.asarray(times, dtype=np.int64) - (t0 or 0)) / NS_PER_S
            yield levels, t_s
            if window is not None and len(t_s) and t_s.min() >= window:
                break

    def __iter__(self) -> Iterator[Block]:
        ref = self.level_reference
        self.stats = ReadStats()
        framer = _Framer(
            path=self.path,
            source=self.source,
            sensor=self.sensor,
            spec=self.band_spec,
            opts=self.options,
            reference=ref,
            stats=self.stats,
        )
        late: ArchiveError | None = None
        try:
            for ev in self._guard(self._events()):
                if ev[0] == "segment":
                    yield from framer.new_segment(ev[1], ev[2])
                elif ev[0] == "rows":
                    yield from framer.push(ev[1], ev[2], ev[3])
                else:  # ("error", problem, position): a damage found after the readable data
                    late = self._fail(ev[1], ev[2])
        except ArchiveError as exc:
            # Damage or a broken rule mid-file: the rows read before it (placed by the
            # framer) still come out as a last, shorter block, then the error is raised.
            late = exc
        yield from framer.finish()
        if late is not None:
            raise late

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, spec={self.band_spec.name!r}, sensor={self.sensor!r})"


def _check_bands(reader: BlockReader, found: int, what: str) -> None:
    if found != reader.band_spec.n_bands:
        raise reader._fail(
            f"{what} has {found} bands but the band spec {reader.band_spec.name!r} has "
            f"{reader.band_spec.n_bands}; pass the {option('spec')} (and the band columns) that match the data"
        )


# ------------------------------------------------------------------- tabular (arrow)
def _times_to_ns(reader: BlockReader, col: Any, time_unit: str | None, row0: int) -> np.ndarray:
    """An arrow time column -> int64 ns since the epoch (UTC); nulls are an error."""
    import pyarrow as pa

    if col.null_count:
        k = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise reader._fail("missing time stamp", f"row {row0 + k}")
    t = col.type
    ns: np.ndarray  # pyarrow is untyped
    if pa.types.is_timestamp(t):
        ns = col.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64) * _TIME_UNITS[t.unit]
        return ns
    if pa.types.is_date(t):
        ns = col.cast(pa.timestamp("ns")).cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
        return ns
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        if time_unit is None:
            raise reader._fail(
                f"the time column is numeric ({t}): pass {option('time_unit')} one of "
                f"{sorted(_TIME_UNITS)} (since the Unix epoch, UTC)"
            )
        v = col.to_numpy(zero_copy_only=False)
        if pa.types.is_integer(t):
            ns = v.astype(np.int64) * _TIME_UNITS[time_unit]
            return ns
        bad = ~np.isfinite(v)
        if bad.any():  # a float NaN is a missing stamp too, not a jump backwards
            k = int(np.flatnonzero(bad)[0])
            raise reader._fail(f"missing time stamp ({v[k]})", f"row {row0 + k}")
        ns = np.rint(v.astype(np.float64) * _TIME_UNITS[time_unit]).astype(np.int64)
        return ns
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            ts = col.cast(pa.timestamp("ns", tz="UTC"))
        except pa.ArrowInvalid:  # no zone offset: taken as UTC
            try:
                ts = col.cast(pa.timestamp("ns"))
            except pa.ArrowInvalid as exc:
                raise reader._fail(f"cannot parse the time column as ISO 8601: {exc}", f"rows {row0}..") from None
        ns = ts.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
        return ns
    raise reader._fail(f"unsupported time column type {t}")


def _is_numeric(t: Any) -> bool:
    import pyarrow as pa

    return bool((pa.types.is_integer(t) or pa.types.is_floating(t)) and not pa.types.is_boolean(t))


def _is_list(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


class _TabularReader(BlockReader):
    """Shared column logic of the Parquet and CSV readers."""

    # set by _resolve_columns (time_unit by the subclass): either a list column or band columns
    time_column: str
    levels_column: str | None
    band_columns: list[str] | None
    time_unit: str | None
    _row0: int

    def _resolve_columns(
        self, schema: Any, time_column: str | None, band_columns: Sequence[str] | None, levels_column: str | None
    ) -> None:
        import pyarrow as pa

        names = list(schema.names)
        if time_column is None:
            ts = [f.name for f in schema if pa.types.is_timestamp(f.type)]
            lower = {n.lower(): n for n in names}
            named = [lower[n] for n in _TIME_NAMES if n in lower]
            time_column = ts[0] if ts else (named[0] if named else None)
            if time_column is None:
                raise self._fail(f"no time column found among {names}; pass {option('time_column')}")
        elif time_column not in names:
            raise self._fail(f"time column {time_column!r} not found; columns are {names}")
        self.time_column = time_column
        others = [f for f in schema if f.name != time_column]
        if levels_column is None and band_columns is None:
            lists = [f.name for f in others if _is_list(f.type)]
            if lists and not any(_is_numeric(f.type) for f in others):
                levels_column = lists[0]
        if levels_column is not None:
            if levels_column not in names:
                raise self._fail(f"levels column {levels_column!r} not found; columns are {names}")
            if not _is_list(schema.field(levels_column).type):
                raise self._fail(f"levels column {levels_column!r} is {schema.field(levels_column).type}, not a list")
            self.levels_column, self.band_columns = levels_column, None
            return
        if band_columns is None:
            band_columns = [f.name for f in others if _is_numeric(f.type)]
        else:
            band_columns = list(band_columns)
            missing = [c for c in band_columns if c not in names]
            if missing:
                raise self._fail(f"band columns {missing} not found; columns are {names}")
        _check_bands(self, len(band_columns), f"columns {band_columns}")
        self.levels_column, self.band_columns = None, band_columns

    def _batch_levels(self, batch: Any, row0: int) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        nb = self.band_spec.n_bands
        n = batch.num_rows
        if self.levels_column is not None:
            col = batch.column(self.levels_column)
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            present = ~col.is_null().to_numpy(zero_copy_only=False)
            wrong = present & (np.nan_to_num(lengths.astype(np.float64), nan=nb) != nb)
            if wrong.any():
                k = int(np.argmax(wrong))
                raise self._fail(
                    f"the list in column {self.levels_column!r} has {int(lengths[k])} values "
                    f"but the band spec {self.band_spec.name!r} has {nb}",
                    f"row {row0 + k}",
                )
            out = np.full((n, nb), np.nan, dtype=np.float32)
            if present.any():
                vals = col.filter(pa.array(present)).flatten().cast(pa.float64()).to_numpy(zero_copy_only=False)
                out[present] = vals.reshape(-1, nb)
            return out
        out = np.empty((n, nb), dtype=np.float32)
        assert self.band_columns is not None  # no levels column: band columns
        for j, name in enumerate(self.band_columns):
            c = batch.column(name)
            if not _is_numeric(c.type) and not pa.types.is_null(c.type):
                raise self._fail(f"band column {name!r} is {c.type}, not numeric", f"rows {row0}..{row0 + n - 1}")
            out[:, j] = c.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return out

    def _tabular_events(self, batches: Iterable[Any]) -> Iterator[_Event]:
        row0 = 0
        it = iter(batches)
        while True:
            self._pos = f"rows {row0}.. (reading)"
            self._row0 = row0  # the first row of the batch being read, for the errors of its parsing
            batch = next(it, None)
            if batch is None:
                break
            n = batch.num_rows
            self._pos = f"rows {row0}..{row0 + max(n, 1) - 1}"
            times = _times_to_ns(self, batch.column(self.time_column), self.time_unit, row0)
            yield ("rows", self._batch_levels(batch, row0), row0, times)
            row0 += n
        self._pos = f"row {row0} (end of data)"

    def _extra(self) -> dict[str, Any]:
        return {
            "time_column": self.time_column,
            "band_columns": self.band_columns,
            "levels_column": self.levels_column,
            "time_unit": self.time_unit,
        }


class ParquetReader(_TabularReader):
    """A Parquet file, read by record batches (never whole): one row per frame.

    Columns: a time column (auto: the first timestamp column, else one named
    ``timestamp``/``time``/...) and either one numeric column per band (auto: every
    other numeric column, in order) or one list column of band values. Null band
    values are bad rows (see ``gaps``). One sensor per file.
    """

    format = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str | BandSpec = "cense_fast",
        time_column: str | None = None,
        band_columns: Sequence[str] | None = None,
        levels_column: str | None = None,
        time_unit: str | None = None,
        sensor: str | None = None,
        source: str | None = None,
        **options: Any,
    ):
        super().__init__(path, spec=spec, sensor=sensor, source=source, options=options)
        if time_unit is not None and time_unit not in _TIME_UNITS:
            raise InvalidInputError(f"time_unit must be one of {sorted(_TIME_UNITS)}, got {time_unit!r}")
        self.time_unit = time_unit
        require_module("pyarrow", "archives", "reading Parquet archives")  # not "an unreadable file"
        pf = self._open()
        self._num_rows: int = pf.metadata.num_rows
        self._resolve_columns(pf.schema_arrow, time_column, band_columns, levels_column)

    def _open(self) -> Any:
        import pyarrow.parquet as pq

        try:
            # pre_buffer=False: with pre-buffering (pyarrow's default) the reader keeps every
            # row group it has read until the file is closed, so memory grows with the file.
            return pq.ParquetFile(self.path, pre_buffer=False)
        except Exception as exc:  # ArrowInvalid, OSError...
            raise self._fail(f"not a readable Parquet file ({type(exc).__name__}: {exc})", "file footer") from exc

    def duration_hint(self) -> float | None:
        return self._num_rows * self.band_spec.frame_period

    def _events(self) -> Iterator[_Event]:
        pf = self._open()
        cols = [self.time_column, *self.band_columns] if self.band_columns else [self.time_column, self.levels_column]
        try:
            yield from self._tabular_events(pf.iter_batches(batch_size=self.options.batch_rows, columns=cols))
        finally:
            pf.close()


class CsvReader(_TabularReader):
    """A CSV file, streamed by blocks (pyarrow.csv): a time column plus one numeric
    column per band (auto: every other numeric column, in order). Empty, ``NaN`` and
    ``NA`` cells are bad rows (see ``gaps``).

    ``header``: whether the first row names the columns. ``None`` (default) decides
    from the row: when every cell of it is a number (the first may be a time stamp),
    it is data, and the file is read without a header (with an
    :class:`~spectral_transcoder.errors.InputWarning`): the columns are then named
    ``f0``, ``f1``, ..., the time is ``f0`` unless ``time_column`` says otherwise, and
    the others are the bands.
    """

    format = "csv"
    band_columns: list[str]  # a CSV has no list column

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str | BandSpec = "cense_fast",
        time_column: str | None = None,
        band_columns: Sequence[str] | None = None,
        time_unit: str | None = None,
        delimiter: str = ",",
        header: bool | None = None,
        sensor: str | None = None,
        source: str | None = None,
        **options: Any,
    ):
        super().__init__(path, spec=spec, sensor=sensor, source=source, options=options)
        if time_unit is not None and time_unit not in _TIME_UNITS:
            raise InvalidInputError(f"time_unit must be one of {sorted(_TIME_UNITS)}, got {time_unit!r}")
        if header is not None and not isinstance(header, bool):
            raise InvalidInputError(f"header must be True, False or None (decide from the first row), got {header!r}")
        self.time_unit, self.delimiter = time_unit, delimiter
        require_module("pyarrow", "archives", "reading CSV archives")
        import pyarrow as pa

        self.header = True if header is None else header
        schema = self._schema()
        if header is None and _row_is_data(schema.names):
            # Read with a header, such a file loses its first frame and shifts every window by one.
            self.header = False
            schema = self._schema()
            first = ", ".join(_first_cells(self.path, delimiter, 3))
            warnings.warn(
                f"{self.path}: the first row holds numbers, not column names ({first}, ...): it is read as data, "
                f"the file as one with no header; column f0 is the time, the others the bands "
                f"(pass {option('header', True)} if the first row is a header)",
                InputWarning,
                stacklevel=_outside_stacklevel(),
            )
        if not self.header and time_column is None and schema.names:
            time_column = schema.names[0]
        self._names = list(schema.names)
        try:
            self._resolve_columns(schema, time_column, band_columns, None)
        except ArchiveError:
            # "28 bands but the band spec has 29": most often a band column that a typo in a cell
            # ("4O.5") made a text column; name that cell rather than the count
            typo = self._typo_in(schema, exclude=time_column)
            if typo is None:
                raise
            raise typo from None
        typo = self._typo_in(schema, exclude=self.time_column, only=self.band_columns)
        if typo is not None:
            raise typo
        # fix the types so that later blocks parse like the first (ints then floats, seconds then ms)
        tt = schema.field(self.time_column).type
        if pa.types.is_timestamp(tt):
            tt = pa.timestamp("ns", tz=tt.tz)
        elif _is_numeric(tt):
            tt = pa.float64() if pa.types.is_floating(tt) else pa.int64()
        self._types = {self.time_column: tt, **{c: pa.float64() for c in self.band_columns}}

    def _schema(self) -> Any:
        """The column names and the types of the first block."""
        import pyarrow.csv as pcsv

        try:
            with pcsv.open_csv(
                self.path, read_options=self._read_options(), parse_options=pcsv.ParseOptions(delimiter=self.delimiter)
            ) as r:
                return r.schema
        except Exception as exc:
            raise self._fail(f"not a readable CSV file ({type(exc).__name__}: {exc})", "header") from exc

    def _read_options(self) -> Any:
        import pyarrow.csv as pcsv

        return pcsv.ReadOptions(
            block_size=max(1 << 16, self.options.batch_rows * 256), autogenerate_column_names=not self.header
        )

    def _events(self) -> Iterator[_Event]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        conv = pcsv.ConvertOptions(
            column_types=self._types, include_columns=[self.time_column, *self.band_columns], strings_can_be_null=True
        )
        try:
            with pcsv.open_csv(
                self.path,
                read_options=self._read_options(),
                parse_options=pcsv.ParseOptions(delimiter=self.delimiter),
                convert_options=conv,
            ) as r:
                yield from self._tabular_events(r)
        except pa.ArrowInvalid as exc:
            # pyarrow names the column (by number) and the text, not the row: find the cell
            m = re.search(r"column #(\d+): CSV conversion error to \w+: invalid value", str(exc))
            name = self._names[int(m.group(1))] if m and int(m.group(1)) < len(self._names) else None
            typo = self._bad_cell(name, self._row0) if name is not None and name in self.band_columns else None
            if typo is None:
                raise
            raise typo from None

    # ------------------------------------------------------------- typos
    def _typo_in(self, schema: Any, *, exclude: str | None, only: Sequence[str] | None = None) -> ArchiveError | None:
        """The first non-number cell of a text column that should hold band levels: one of
        ``only`` (band columns given), else any text column whose cells (in the first block)
        are mostly numbers."""
        import pyarrow as pa

        text = [
            f.name
            for f in schema
            if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name != exclude
        ]
        if only is not None:
            candidates = [c for c in text if c in only]
        else:
            candidates = [c for c in text if self._mostly_numbers(c)]
        for c in candidates:
            typo = self._bad_cell(c)
            if typo is not None:
                return typo
        return None

    def _mostly_numbers(self, column: str) -> bool:
        import pyarrow.csv as pcsv

        with pcsv.open_csv(
            self.path,
            read_options=self._read_options(),
            parse_options=pcsv.ParseOptions(delimiter=self.delimiter),
            convert_options=pcsv.ConvertOptions(include_columns=[column]),
        ) as r:
            cells = [c for c in r.read_next_batch().column(0).to_pylist() if c is not None]
        return bool(cells) and sum(map(_is_number, cells)) >= len(cells) / 2

    def _bad_cell(self, column: str, start_row: int = 0) -> ArchiveError | None:
        """An error naming the first cell of ``column`` at data row ``start_row`` or later that
        is not a number (nor empty, nor a null token such as NaN or NA), or None."""
        import csv

        import pyarrow.csv as pcsv

        nulls = set(pcsv.ConvertOptions().null_values)
        j = self._names.index(column)
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            rows = csv.reader(f, delimiter=self.delimiter)
            if self.header:
                next(rows, None)
            for row, cells in enumerate(rows):
                if row >= start_row and j < len(cells):
                    cell = cells[j]
                    if cell.strip() not in nulls and not _is_number(cell):
                        return self._fail(
                            f"{cell!r} is not a number", f"row {row} (line {rows.line_num}), column {column!r}"
                        )
        return None

    def duration_hint(self) -> float | None:
        return None

    def _extra(self) -> dict[str, Any]:
        # "header" only when there is none: the description of ordinary files stays as it was
        return {**super()._extra(), **({} if self.header else {"header": False})}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_time(text: str) -> bool:
    try:
        to_datetime64(text)
    except InvalidInputError:
        return False
    return True


def _row_is_data(cells: Sequence[str]) -> bool:
    """A CSV first row of numbers only (the first cell may be a time stamp) is data, not a header."""
    cells = [c.strip() for c in cells]
    if len(cells) < 2 or not all(_is_number(c) for c in cells[1:]):
        return False
    return _is_number(cells[0]) or _is_time(cells[0])


def _first_cells(path: str, delimiter: str, n: int) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        row = next(csv.reader(f, delimiter=delimiter), [])
    return row[:n]


# ------------------------------------------------------------------------ arrays
class _ClipReader(BlockReader):
    """Arrays of (clips, frames, bands): clip ``c`` is a segment starting at
    ``clip_starts[c]``, else ``start + c * frames * frame_period`` (contiguous clips)."""

    def _setup_clips(self, shape: tuple[int, ...], start: Any, clip_starts: Sequence[Any] | None, what: str) -> None:
        if len(shape) == 2:
            shape = (1, *shape)
            self._squeeze = True
        else:
            self._squeeze = False
        if len(shape) != 3:
            raise self._fail(f"{what} has shape {shape}; expected (clips, frames, bands) or (frames, bands)")
        _check_bands(self, int(shape[2]), f"{what} (shape {shape})")
        self.n_clips, self.n_frames = int(shape[0]), int(shape[1])
        self.start_known = start is not None or clip_starts is not None
        base = to_datetime64(start) if start is not None else np.datetime64(0, "ns")
        step = round(self.n_frames * self.band_spec.frame_period * NS_PER_S)
        if clip_starts is not None:
            if len(clip_starts) != self.n_clips:
                raise InvalidInputError(f"clip_starts has {len(clip_starts)} times for {self.n_clips} clips")
            self.clip_starts = [int(to_datetime64(c, "clip_starts").astype(np.int64)) for c in clip_starts]
        else:
            b = int(base.astype(np.int64))
            self.clip_starts = [b + c * step for c in range(self.n_clips)]

    def duration_hint(self) -> float | None:
        return self.n_clips * self.n_frames * self.band_spec.frame_period

    def _clip_events(self, read: Any) -> Iterator[_Event]:
        """``read(c, a, b)`` returns frames a..b of clip c as (b - a, bands)."""
        step = self.options.batch_rows
        for c in range(self.n_clips):
            yield ("segment", self.clip_starts[c], None if self._squeeze else c)
            for a in range(0, self.n_frames, step):
                b = min(self.n_frames, a + step)
                self._pos = (f"clip {c}, " if not self._squeeze else "") + f"frames {a}..{b - 1}"
                yield ("rows", np.asarray(read(c, a, b), dtype=np.float32), a, None)

    def _extra(self) -> dict[str, Any]:
        return {"start_known": self.start_known, "clips": self.n_clips, "frames_per_clip": self.n_frames}


class Hdf5Reader(_ClipReader):
    """HDF5 in the fast-to-ears layout: dataset ``fast_125ms`` of shape (clips, frames, bands)
    (or (frames, bands)) in dB, read by slices (h5py), never loaded whole.

    Times: ``clip_starts``, else ``start`` (or a ``start`` attribute of the dataset or
    the file: ISO 8601 or epoch seconds) plus contiguous clips, else the epoch.
    """

    format = "hdf5"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str | BandSpec = "cense_fast",
        dataset: str = "fast_125ms",
        start: Any = None,
        clip_starts: Sequence[Any] | None = None,
        sensor: str | None = None,
        source: str | None = None,
        **options: Any,
    ):
        super().__init__(path, spec=spec, sensor=sensor, source=source, options=options)
        self.dataset = dataset
        with self._open() as f:
            if dataset not in f:
                found = sorted(f.keys())
                hint = option("dataset", found[0]) if len(found) == 1 else f"{option('dataset')} one of them"
                raise self._fail(f"no dataset {dataset!r} (found: {found}); pass {hint}")
            ds = f[dataset]
            if start is None:
                for holder in (ds, f):
                    if "start" in holder.attrs:
                        a = holder.attrs["start"]
                        start = a.item() if isinstance(a, np.ndarray) else a
                        break
            self._setup_clips(tuple(ds.shape), start, clip_starts, f"dataset {dataset!r}")

    def _open(self) -> Any:
        require_module("h5py", "archives", "reading HDF5 archives")
        import h5py

        try:
            return h5py.File(self.path, "r")
        except Exception as exc:  # OSError on truncated/corrupt files
            raise self._fail(f"not a readable HDF5 file ({type(exc).__name__}: {exc})", "file header") from exc

    def _events(self) -> Iterator[_Event]:
        with self._open() as f:
            ds = f[self.dataset]
            if self._squeeze:
                yield from self._clip_events(lambda c, a, b: ds[a:b])
            else:
                yield from self._clip_events(lambda c, a, b: ds[c, a:b])

    def _extra(self) -> dict[str, Any]:
        return {**super()._extra(), "dataset": self.dataset}


class ArrayReader(_ClipReader):
    """NPY (memory-mapped), an NPZ member (streamed from the zip, never loaded whole
    unless Fortran-ordered) or an in-memory array: (clips, frames, bands) or (frames, bands).

    ``key`` names the NPZ member (default: the only one, else ``levels`` or ``fast_125ms``).
    Times as for :class:`Hdf5Reader` (``start`` / ``clip_starts``, else the epoch).
    """

    format = "npy"

    def __init__(
        self,
        path_or_array: str | os.PathLike[str] | np.ndarray,
        *,
        spec: str | BandSpec = "cense_fast",
        key: str | None = None,
        start: Any = None,
        clip_starts: Sequence[Any] | None = None,
        sensor: str | None = None,
        source: str | None = None,
        **options: Any,
    ):
        if isinstance(path_or_array, np.ndarray):
            self._array: np.ndarray | None = path_or_array
            path: str | os.PathLike[str] = "<array>"
            if source is None:
                source = "array"
            sensor = "array" if sensor is None else sensor
        else:
            self._array = None
            path = path_or_array
        super().__init__(path, spec=spec, sensor=sensor, source=source, options=options)
        self.key = key
        self._npz = self._array is None and self.path.lower().endswith(".npz")
        if self._array is not None:
            if self._array.dtype.kind not in "fiu":
                raise InvalidInputError(f"levels must be real numbers, got dtype {self._array.dtype}")
            shape = self._array.shape
        elif self._npz:
            with self._open_member() as (_fh, shape, _dtype, _fortran):
                pass
        else:
            shape = self._mmap().shape
        self._setup_clips(
            tuple(shape),
            start,
            clip_starts,
            "array" if self._array is not None else (f"member {self.key!r}" if self._npz else "array"),
        )

    def _mmap(self) -> np.ndarray:
        try:
            a = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # truncated: "mmap length is greater than file size"
            raise self._fail(f"not a readable .npy file ({type(exc).__name__}: {exc})", "file header") from exc
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
            raise self._fail(f"expected an array of real dB levels, got dtype {getattr(a, 'dtype', type(a))}")
        return a

    class _Member:
        def __init__(self, reader: ArrayReader):
            self.reader = reader

        def __enter__(self) -> tuple[Any, tuple[int, ...], np.dtype, bool]:
            r = self.reader
            try:
                self.zf = zipfile.ZipFile(r.path)
                names = [n[:-4] for n in self.zf.namelist() if n.endswith(".npy")]
            except Exception as exc:
                raise r._fail(f"not a readable .npz file ({type(exc).__name__}: {exc})", "zip directory") from exc
            if r.key is None:
                pick = names if len(names) == 1 else [n for n in ("levels", "fast_125ms") if n in names]
                if not pick:
                    self.zf.close()
                    raise r._fail(f"several arrays {names}: pass {option('key')} to choose one")
                r.key = pick[0]
            elif r.key not in names:
                self.zf.close()
                raise r._fail(f"no array {r.key!r} in the archive (found {names})")
            try:
                self.fh = self.zf.open(r.key + ".npy")
                version = np.lib.format.read_magic(self.fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.fh)
                else:  # format 3.0 (utf-8 field names): numpy has no public reader for its header
                    shape, fortran, dtype = np.lib.format._read_array_header(self.fh, version)  # type: ignore[attr-defined]
            except Exception as exc:
                self.zf.close()
                raise r._fail(
                    f"member {r.key!r} is not a valid .npy ({type(exc).__name__}: {exc})", "array header"
                ) from exc
            if dtype.kind not in "fiu" or dtype.hasobject:
                self.zf.close()
                raise r._fail(f"member {r.key!r} has dtype {dtype}; expected real dB levels")
            return self.fh, shape, dtype, fortran

        def __exit__(self, *exc: Any) -> None:
            self.zf.close()

    def _open_member(self) -> ArrayReader._Member:
        return ArrayReader._Member(self)

    def _events(self) -> Iterator[_Event]:
        if self._array is not None:
            a = self._array if not self._squeeze else self._array[None]
            yield from self._clip_events(lambda c, i, j: a[c, i:j])
        elif not self._npz:
            a = self._mmap()
            a = a if not self._squeeze else a[None]
            yield from self._clip_events(lambda c, i, j: a[c, i:j])
        else:
            with self._open_member() as (fh, shape, dtype, fortran):
                if fortran:  # rows are not contiguous in the stream: load this member whole
                    a = np.frombuffer(fh.read(), dtype=dtype).reshape(shape, order="F")
                    a = a.reshape(self.n_clips, self.n_frames, -1)
                    yield from self._clip_events(lambda c, i, j: a[c, i:j])
                    return
                nb = self.band_spec.n_bands
                row_bytes = nb * dtype.itemsize
                state = {"next": (0, 0)}

                def read(c: int, i: int, j: int) -> np.ndarray:
                    # sequential stream: clips and frames are asked for in order
                    assert state["next"] == (c, i)
                    want = (j - i) * row_bytes
                    buf = fh.read(want)
                    if len(buf) != want:
                        raise self._fail(f"member {self.key!r} is truncated ({len(buf)} of {want} bytes)")
                    state["next"] = (c, j) if j < self.n_frames else (c + 1, 0)
                    return np.frombuffer(buf, dtype=dtype).reshape(j - i, nb)

                yield from self._clip_events(read)

    def _extra(self) -> dict[str, Any]:
        return {**super()._extra(), "key": self.key}


# ----------------------------------------------------------------- NoiseCapture
def _parse_properties(text: str) -> dict[str, str]:
    """Java ``.properties``: ``key=value`` or ``key: value`` lines, ``#``/``!`` comments,
    backslash escapes (``\\:``, ``\\=``, ``\\uXXXX``) and continuation lines."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while line.endswith("\\") and not line.endswith("\\\\") and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        key: list[str] = []
        value: list[str] | None = None
        j, esc = 0, False
        chars: list[str] = key
        while j < len(line):
            ch = line[j]
            j += 1
            if esc:
                if ch == "u" and j + 4 <= len(line):
                    chars.append(chr(int(line[j : j + 4], 16)))
                    j += 4
                else:
                    chars.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(ch, ch))
                esc = False
            elif ch == "\\":
                esc = True
            elif value is None and ch in "=: \t":
                value = []
                chars = value
                while j < len(line) and line[j] in " \t":
                    j += 1
                if ch in " \t" and j < len(line) and line[j] in "=:":
                    j += 1
                    while j < len(line) and line[j] in " \t":
                        j += 1
            else:
                chars.append(ch)
        out["".join(key)] = "".join(value or [])
    return out


@dataclass(frozen=True)
class SnapReport:
    """What :func:`snap_to_grid` did to a sequence of time stamps."""

    n: int
    """Stamps looked at."""
    snapped: int
    """Stamps moved (by a non-zero shift)."""
    max_shift_s: float
    """Largest shift, seconds (absolute)."""
    period_s: float
    """The grid's period: the source's own, fitted (a phone's clock may run a little fast)."""
    phase_s: float
    """Where the grid lies: seconds after the whole second (UTC) of its first slot."""
    collisions: int
    """Stamps that fell in the slot of the previous one, though more than the tolerance
    after it, and were moved to the next free slot."""
    left: int
    """Stamps further than the tolerance from the grid, left as recorded."""


def _repair_slots(t: np.ndarray, slot: np.ndarray, tolerance_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Slots ``(n,)`` of stamps ``t`` after the collision repair, and which stamps it moved: a
    stamp in the previous stamp's slot though more than ``tolerance_ns`` after it is a later
    measurement whose stamp jittered, not a repeat; it goes to the next slot when that is free."""
    n = len(t)
    slot = np.array(slot, dtype=np.int64)
    moved = np.zeros(n, dtype=bool)
    for k in range(1, n):
        if slot[k] == slot[k - 1] and t[k] - t[k - 1] > tolerance_ns and (k + 1 == n or slot[k + 1] > slot[k] + 1):
            slot[k] += 1
            moved[k] = True
    return slot, moved


def snap_to_grid(times_ns: np.ndarray, period_ns: int, tolerance_ns: int) -> tuple[np.ndarray, SnapReport]:
    """Put jittered time stamps ``(n,)`` int64 ns (one per ``period_ns``, in order) on a regular grid.

    1. Each stamp gets a slot from its distance to the previous one (the framer's rule:
       the nearest whole number of periods), a stamp in the previous one's slot but more
       than ``tolerance_ns`` after it going to the next (see :func:`_slots`).
    2. A line ``t = a + b * slot`` is fitted to the stamps (least squares, then again
       without those further than the tolerance from it): ``a`` is the grid's phase and
       ``b`` its period, which follows a phone's clock that runs a little fast.
    3. Slots are taken again from the line (so that one late stamp does not shift the next),
       repaired as in 1, and a stamp within ``tolerance_ns`` of its grid time (or moved by
       the repair) is put on it. Stamps within the tolerance of each other in one slot (a
       true duplicate) are left for the framer to refuse, as are those far from the grid.

    Returns the new stamps (int64 ns) and a :class:`SnapReport`.
    """
    t = np.asarray(times_ns, dtype=np.int64)
    n = len(t)
    if n < 2:  # no grid to fit
        return t.copy(), SnapReport(n, 0, 0.0, period_ns / NS_PER_S, 0.0, 0, 0)
    rel = (t - t[0]).astype(np.float64)  # small numbers for the fit
    steps = np.concatenate([[0], np.floor(np.diff(rel) / period_ns + 0.5)]).astype(np.int64)
    first, _ = _repair_slots(t, np.cumsum(steps), tolerance_ns)
    fit = np.ones(n, dtype=bool)
    a, b = 0.0, float(period_ns)
    for _ in range(2):
        if np.unique(first[fit]).size >= 2:
            b, a = np.polyfit(first[fit].astype(np.float64), rel[fit], 1)
        fit = np.abs(rel - (a + b * first)) <= tolerance_ns
        if not fit.any():
            break
    if not (0.9 * period_ns < b < 1.1 * period_ns):  # not one stamp per period: leave them be
        return t.copy(), SnapReport(n, 0, 0.0, float(b) / NS_PER_S, 0.0, 0, n)
    slot, moved = _repair_slots(t, np.floor((rel - a) / b + 0.5), tolerance_ns)
    grid = a + b * slot
    snap = (np.abs(rel - grid) <= tolerance_ns) | moved
    out = np.where(snap, t[0] + np.rint(grid).astype(np.int64), t)
    shift = np.abs(out - t)
    return out, SnapReport(
        n=n,
        snapped=int(np.count_nonzero(shift)),
        max_shift_s=float(shift.max()) / NS_PER_S,
        period_s=float(b) / NS_PER_S,
        phase_s=((int(t[0]) + int(round(a))) % NS_PER_S) / NS_PER_S,
        collisions=int(moved.sum()),
        left=int(np.count_nonzero(~snap)),
    )


class NoiseCaptureReader(BlockReader):
    """A NoiseCapture app export (zip): ``meta.properties`` plus ``track.geojson``.

    The GeoJSON FeatureCollection holds one feature per second; its properties hold
    ``leq_utc`` (ms since the epoch, taken as the frame's start) and the 23 band levels
    ``leq_100`` ... ``leq_16000`` (calibrated dB as measured by the phone, the band
    spec ``noisecapture``). The track (one recording) is read whole; it is small.
    ``sensor`` defaults to the export's anonymous ``uuid``. ``properties`` holds the
    metadata (device, ``gain_calibration``, ``record_utc``...).

    The phone stamps its 1-s measurements late by a varying few hundred ms, so that two
    can fall in one 1-s slot. The stamps are therefore put on a 1-s grid first
    (:func:`snap_to_grid`, those within ``snap_tolerance`` frame periods of it: 0.25 s
    for the ``noisecapture`` spec; None keeps them as recorded); when that moved a stamp
    by more than 5 % of a period, an :class:`~spectral_transcoder.errors.InputWarning`
    says how many moved and by how much (:attr:`snap_report`). A true duplicate (two
    stamps within the tolerance in one slot) still stops the reading.
    """

    format = "noisecapture"
    META, TRACK = "meta.properties", "track.geojson"
    _NON_BANDS = ("leq_mean", "leq_utc", "leq_id")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str | BandSpec = "noisecapture",
        snap_tolerance: float | None = 0.25,
        sensor: str | None = None,
        source: str | None = None,
        **options: Any,
    ):
        super().__init__(path, spec=spec, sensor=sensor, source=source, options=options)
        if snap_tolerance is not None and not (
            isinstance(snap_tolerance, (int, float))
            and not isinstance(snap_tolerance, bool)
            and 0 < snap_tolerance < 0.5
        ):
            raise InvalidInputError(
                f"snap_tolerance must be None or a fraction of the frame period in (0, 0.5), got {snap_tolerance!r}"
            )
        self.snap_tolerance = None if snap_tolerance is None else float(snap_tolerance)
        self.snap_report: SnapReport | None = None
        self._snapped: np.ndarray | None = None
        self.band_keys = [f"leq_{f:g}" for f in nominal_frequencies(self.band_spec)]
        self.properties, self._features = self._load()
        if sensor is None and self.properties.get("uuid"):
            self.sensor = self.properties["uuid"]
        if self._features:  # band names and count, checked up front on the first feature
            self._feature(0, self._features[0])

    def _load(self) -> tuple[dict[str, str], list[Any]]:
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
                missing = [m for m in (self.META, self.TRACK) if m not in names]
                if missing:
                    raise self._fail(f"not a NoiseCapture export: {missing} missing (found {names})", "zip directory")
                self._pos = self.META
                props = _parse_properties(zf.read(self.META).decode("utf-8", errors="replace"))
                self._pos = self.TRACK
                doc = json.loads(zf.read(self.TRACK).decode("utf-8"))
        except ArchiveError:
            raise
        except Exception as exc:  # BadZipFile, CRC error, JSONDecodeError...
            raise self._fail(f"unreadable NoiseCapture export ({type(exc).__name__}: {exc})") from exc
        if (
            not isinstance(doc, dict)
            or doc.get("type") != "FeatureCollection"
            or not isinstance(doc.get("features"), list)
        ):
            raise self._fail("track.geojson is not a GeoJSON FeatureCollection", self.TRACK)
        return props, doc["features"]

    def duration_hint(self) -> float | None:
        return len(self._features) * self.band_spec.frame_period

    def _feature(self, index: int, feat: Any) -> tuple[int, list[float | None]]:
        """Validate one feature: (leq_utc in ns, band values with None for null)."""
        where = f"{self.TRACK} feature {index}"
        props = feat.get("properties") if isinstance(feat, dict) else None
        if not isinstance(props, dict):
            raise self._fail("feature without properties", where)
        utc = props.get("leq_utc")
        if isinstance(utc, bool) or not isinstance(utc, (int, float)) or not math.isfinite(utc):
            raise self._fail(f"leq_utc missing or not a number ({utc!r})", where)
        bands = [key for key in props if key.startswith("leq_") and key not in self._NON_BANDS]
        if len(bands) != len(self.band_keys) or set(bands) != set(self.band_keys):
            extra = [key for key in bands if key not in self.band_keys]
            missing = [key for key in self.band_keys if key not in props]
            raise self._fail(
                f"{len(bands)} band levels where the band spec {self.band_spec.name!r} has {len(self.band_keys)}"
                + (f"; unexpected {extra}" if extra else "")
                + (f"; missing {missing}" if missing else ""),
                where,
            )
        values = [props[key] for key in self.band_keys]
        for key, v in zip(self.band_keys, values):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise self._fail(f"{key} is not a number ({v!r})", where)
        return int(round(utc * 1_000_000)), values

    def _snap(self) -> np.ndarray | None:
        """The snapped stamps of all features (ns; -1 where ``leq_utc`` is unusable, which
        the feature's own check reports in its turn), computed once per reader."""
        if self.snap_tolerance is None or self._snapped is not None:
            return self._snapped
        raw = np.full(len(self._features), -1, dtype=np.int64)
        for k, feat in enumerate(self._features):
            utc = feat.get("properties", {}).get("leq_utc") if isinstance(feat, dict) else None
            if isinstance(utc, (int, float)) and not isinstance(utc, bool) and math.isfinite(utc):
                raw[k] = int(round(utc * 1_000_000))
        ok = raw >= 0
        period = int(round(self.band_spec.frame_period * NS_PER_S))
        tolerance_s = self.snap_tolerance * self.band_spec.frame_period
        snapped, report = snap_to_grid(raw[ok], period, int(round(tolerance_s * NS_PER_S)))
        self._snapped = raw.copy()
        self._snapped[ok] = snapped
        self.snap_report = report
        # Shifts of a few per cent of a period are the grid itself (rounding, a clock that runs a
        # little fast); what changed the reading, or could have, is reported.
        if report.max_shift_s > 0.05 * self.band_spec.frame_period or report.collisions or report.left:
            extra = ""
            if report.collisions:
                extra += (
                    f"; {report.collisions} of them shared a slot with the previous stamp, more than "
                    f"{tolerance_s:g} s after it, and went to the next free slot"
                )
            if report.left:
                extra += f"; {report.left} stamp(s) further than {tolerance_s:g} s from the grid were left as recorded"
            warnings.warn(
                f"{self.path}: snapped {report.snapped} of {report.n} time stamps to a grid of "
                f"{report.period_s:.4g} s ({report.phase_s:.3f} s after the second), largest shift "
                f"{report.max_shift_s:.3f} s{extra} (the phone's stamps jitter; pass "
                f"{option('snap_tolerance', None)} to keep them as recorded)",
                InputWarning,
                stacklevel=_outside_stacklevel(),
            )
        return self._snapped

    def _events(self) -> Iterator[_Event]:
        feats = self._features
        step = self.options.batch_rows
        snapped = self._snap()
        for a in range(0, len(feats), step):
            chunk = feats[a : a + step]
            self._pos = f"{self.TRACK} features {a}..{a + len(chunk) - 1}"
            parsed = [self._feature(a + k, f) for k, f in enumerate(chunk)]
            times = np.array([p[0] for p in parsed], dtype=np.int64)
            if snapped is not None:  # every feature of the batch passed its check: its stamp is there
                times = snapped[a : a + len(chunk)].copy()
            levels = np.array([[np.nan if v is None else v for v in p[1]] for p in parsed], dtype=np.float32)
            yield ("rows", levels.reshape(len(chunk), -1), a, times)

    def _extra(self) -> dict[str, Any]:
        keep = (
            "version_name",
            "version_number",
            "record_utc",
            "time_length",
            "gain_calibration",
            "device_manufacturer",
            "device_model",
        )
        return {
            "noisecapture": {k: self.properties[k] for k in keep if k in self.properties},
            "snap_tolerance": self.snap_tolerance,
        }


# ------------------------------------------------------------------------ audio
class AudioReader(BlockReader):
    """An audio file (wav, flac, ... via soundfile) analysed on the fly with
    :func:`spectral_transcoder.analysis.third_octave`, streamed with bounded memory.

    The file is read in pieces of ``read_seconds``, mixed to mono (mean of the
    channels, as ``librosa.load``) or ``channel`` picked, resampled to the spec's rate
    with a streaming soxr resampler (the same "HQ" filter as the whole-file path,
    whose output it equals sample for sample), and cut into frames on the spec's grid
    from the first sample; the last frame is zero-padded as in the whole-file
    analysis. The levels therefore equal ``third_octave`` of the whole file, and the same
    files are refused (a sample rate below 8 kHz, less audio than one analysis frame) or
    warned about (a rate below twice the top band's upper edge, 28 251 Hz for ``cense_fast``).
    Levels are dB re full scale (plus the spec's ``db_offset``).
    """

    format = "audio"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str | BandSpec = "cense_fast",
        channel: int | None = None,
        start: Any = None,
        read_seconds: float = 10.0,
        n_threads: int = 0,
        sensor: str | None = None,
        source: str | None = None,
        **options: Any,
    ):
        super().__init__(path, spec=spec, sensor=sensor, source=source, options=options)
        import soundfile as sf

        try:
            info = sf.info(self.path)
        except Exception as exc:  # LibsndfileError / RuntimeError
            raise self._fail(f"not a readable audio file ({type(exc).__name__}: {exc})", "file header") from exc
        self.sample_rate, self.channels, self.n_samples = int(info.samplerate), int(info.channels), int(info.frames)
        if self.n_samples <= 0:
            raise self._fail("the file holds no samples", "file header")
        spec = self.band_spec
        try:  # the same rules as third_octave on the whole file
            check_band_sample_rate(self.sample_rate, spec, "the file's sample rate")
            check_min_duration(
                self.n_samples,
                self.sample_rate,
                spec.frame_length,
                spec.sample_rate,
                "the file",
                f"the band spec {spec.name!r}",
            )
        except InvalidInputError as exc:
            raise self._fail(str(exc), "file header") from None
        if channel is not None and not (isinstance(channel, int) and 0 <= channel < self.channels):
            raise InvalidInputError(f"channel must be None (mix to mono) or 0..{self.channels - 1}, got {channel!r}")
        if not (isinstance(read_seconds, (int, float)) and read_seconds > 0):
            raise InvalidInputError(f"read_seconds must be > 0, got {read_seconds!r}")
        self.channel, self.read_seconds, self.n_threads = channel, float(read_seconds), n_threads
        # libsndfile reads a truncated WAV/AIFF up to its end and notes "data : N (should be M)"
        m = re.search(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info or "")
        self._truncated = (
            (f"the file is truncated: its header announces {m.group(1)} bytes of data, it holds {m.group(2)}")
            if m
            else None
        )
        self.start_known = start is not None
        self.start = to_datetime64(start) if start is not None else np.datetime64(0, "ns")

    def duration_hint(self) -> float | None:
        return self.n_samples / self.sample_rate

    def _events(self) -> Iterator[_Event]:
        import soundfile as sf
        import soxr

        from ..analysis import third_octave

        spec = self.band_spec
        L, H, sr_out = spec.frame_length, spec.hop_length, spec.sample_rate

        def analyse(x: np.ndarray, k: int) -> np.ndarray:
            lv = third_octave(np.ascontiguousarray(x, dtype=np.float32), sr_out, spec=spec, n_threads=self.n_threads)
            assert lv.shape[0] == k, (lv.shape, k)
            return lv

        yield ("segment", int(self.start.astype(np.int64)), None)
        rs = (
            None
            if self.sample_rate == sr_out
            else soxr.ResampleStream(self.sample_rate, sr_out, 1, dtype="float32", quality="HQ")
        )
        buf = np.zeros(0, dtype=np.float32)
        emitted = 0  # frames emitted
        total = 0  # samples at sr_out so far
        read_n = max(1, int(self.read_seconds * self.sample_rate))
        pos_in = 0
        with sf.SoundFile(self.path) as f:
            while True:
                self._pos = f"samples {pos_in}..{pos_in + read_n - 1}"
                x = f.read(read_n, dtype="float32", always_2d=True)
                last = x.shape[0] < read_n or pos_in + x.shape[0] >= self.n_samples
                pos_in += x.shape[0]
                mono = x.mean(axis=1) if self.channel is None else x[:, self.channel]
                y = mono if rs is None else rs.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=last)
                total += len(y)
                buf = np.concatenate([buf, y]) if buf.size else np.asarray(y, dtype=np.float32)
                if len(buf) >= L:
                    k = (len(buf) - L) // H + 1
                    if not last:
                        yield ("rows", analyse(buf[: (k - 1) * H + L], k), emitted, None)
                        emitted += k
                        buf = buf[k * H :]
                if last:
                    break
        if pos_in != self.n_samples:
            raise self._fail(
                f"the file ends after {pos_in} of {self.n_samples} samples (truncated?)", f"sample {pos_in}"
            )
        truncated = self._truncated
        n_total = spec.n_frames(total)
        rest = n_total - emitted
        if rest > 0:
            need = (rest - 1) * H + L
            tail = np.zeros(need, dtype=np.float32)
            tail[: min(need, len(buf))] = buf[:need]
            self._pos = f"frames {emitted}..{n_total - 1} (end)"
            yield ("rows", analyse(tail, rest), emitted, None)
        if truncated:  # the frames it holds are given first, then the error
            yield ("error", truncated, f"sample {pos_in}")

    def _extra(self) -> dict[str, Any]:
        return {
            "start_known": self.start_known,
            "start": str(self.start) + "Z",
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "channel": self.channel,
        }


# ---------------------------------------------------------------------- dispatch
_READERS: dict[str, type[BlockReader]] = {
    ".parquet": ParquetReader,
    ".pq": ParquetReader,
    ".csv": CsvReader,
    ".h5": Hdf5Reader,
    ".hdf5": Hdf5Reader,
    ".hdf": Hdf5Reader,
    ".npy": ArrayReader,
    ".npz": ArrayReader,
    ".zip": NoiseCaptureReader,
    ".wav": AudioReader,
    ".flac": AudioReader,
    ".ogg": AudioReader,
    ".oga": AudioReader,
    ".aif": AudioReader,
    ".aiff": AudioReader,
    ".mp3": AudioReader,
}
_SPEED_OPTIONS = ("n_threads", "read_seconds")  # change speed, never results
_FORMATS: dict[str, type[BlockReader]] = {
    "parquet": ParquetReader,
    "csv": CsvReader,
    "hdf5": Hdf5Reader,
    "npy": ArrayReader,
    "noisecapture": NoiseCaptureReader,
    "audio": AudioReader,
}


def open_archive(path: str | os.PathLike[str], *, format: str | None = None, **options: Any) -> BlockReader:
    """Open one archive file; the reader is chosen from the extension (or ``format``:
    one of ``parquet``, ``csv``, ``hdf5``, ``npy``, ``noisecapture``, ``audio``).

    ``options`` go to the reader: its own arguments (see each class) and the
    :class:`BlockOptions` fields. Iterate the result for :class:`Block` objects.
    """
    if format is not None:
        if format not in _FORMATS:
            raise InvalidInputError(f"format must be one of {sorted(_FORMATS)}, got {format!r}")
        cls = _FORMATS[format]
    else:
        ext = Path(str(path)).suffix.lower()
        if ext not in _READERS:
            raise ArchiveError(
                str(path),
                None,
                f"unknown archive extension {ext!r}; known: {sorted(_READERS)} (or pass {option('format')})",
            )
        cls = _READERS[ext]
    if not os.path.exists(path):
        raise ArchiveError(str(path), None, "no such file")
    return cls(path, **options)


@dataclass(frozen=True)
class ArchiveFailure:
    """A file that failed: where and why, and how many of its blocks were read before."""

    path: str
    position: str | None
    message: str
    blocks_read: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "position": self.position, "message": self.message, "blocks_read": self.blocks_read}


class ArchiveSet:
    """Blocks of many files, one file open at a time. A file that fails (unreadable,
    corrupt, truncated, or breaking a rule) is recorded in :attr:`errors` and the
    others go on; the blocks it gave before failing stay given (and, for a broken
    rule, exactly the blocks before the offending row, whatever the read batch size).
    Paths are read in the given order, duplicates removed."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]], **options: Any):
        seen: dict[str, str] = {}
        for p in paths:  # the same file under two spellings is read once
            seen.setdefault(str(Path(p).resolve()), str(p))
        self.paths = list(seen.values())
        self.options = options
        common = {k: v for k, v in options.items() if k in BlockOptions.__dataclass_fields__}
        self.block_options = BlockOptions(**common)  # bad option values fail here, once
        self.errors: list[ArchiveFailure] = []
        self.stats: dict[str, ReadStats] = {}
        self._skip: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def source_paths(self) -> dict[str, str]:
        """Source id -> file path, without opening the files (a reader's default source is
        its resolved path)."""
        if self.options.get("source") is not None:
            return {str(self.options["source"]): p for p in self.paths}
        return {str(Path(p).resolve()): p for p in self.paths}

    def formats(self) -> set[str]:
        """The formats of the files, from ``format=`` or their extensions (for labels)."""
        if self.options.get("format") is not None:
            return {str(self.options["format"])}
        return {_READERS[ext].format for ext in (Path(p).suffix.lower() for p in self.paths) if ext in _READERS}

    def skip_source(self, source: str) -> None:
        """Stop reading ``source`` (its failure is recorded by the caller): the iteration
        goes on with the next file after the block now being given."""
        self._skip.add(source)

    def duration_hint(self) -> float | None:
        total = 0.0
        for p in self.paths:
            try:
                h = open_archive(p, **self.options).duration_hint()
            except ArchiveError:
                continue
            if h is None:
                return None
            total += h
        return total

    def describe(self) -> dict[str, Any]:
        """The options shared by every file (JSON-able, for output metadata); not the
        file list, so that a resumed run may be given more files."""
        reader_opts = {
            k: (v.to_dict() if isinstance(v, BandSpec) else v)
            for k, v in self.options.items()
            if k not in BlockOptions.__dataclass_fields__ and k not in _SPEED_OPTIONS
        }
        reader_opts.setdefault("spec", "(each format's default)")
        return {"format": "many", "reader_options": reader_opts, "block_options": self.block_options.result_dict()}

    def __iter__(self) -> Iterator[Block]:
        self.errors = []
        self.stats = {}
        self._skip = set()
        for p in self.paths:
            n = 0
            reader = None
            try:
                reader = open_archive(p, **self.options)
                for block in reader:
                    n += 1
                    yield block
                    if reader.source in self._skip:
                        break
            except ArchiveError as exc:
                # the framer's messages (blocks.py) spell options in Python: on the command line,
                # which reports these failures itself, they are given its flags
                self.errors.append(ArchiveFailure(p, exc.position, to_cli_language(exc.problem), n))
            finally:
                if reader is not None:  # what was met up to a failure counts too
                    self.stats[reader.source] = reader.stats


def open_many(paths: Iterable[str | os.PathLike[str]], **options: Any) -> ArchiveSet:
    """Blocks of many archive files (see :class:`ArchiveSet`); failures are collected
    in ``.errors`` instead of stopping the run. ``options`` as for :func:`open_archive`."""
    return ArchiveSet(paths, **options)


def auto_offset(path: str | os.PathLike[str], **options: Any) -> LevelReference:
    """Measure the ``reference="auto"`` offset of one file (e.g. to apply it to a whole
    sensor's archive with ``reference="SPL", spl_offset=-ref.offset_db``)."""
    options = {**options, "reference": "auto"}
    options.pop("spl_offset", None)
    return open_archive(path, **options).level_reference
