"""Streaming third-octave archives with bounded memory, and a resumable block engine.

Read any archive as fixed-size, time-stamped :class:`Block` objects::

    from spectral_transcoder import archives

    blocks = archives.open_many(paths, gaps="mask", reference="SPL", spl_offset=94.0)
    summary = archives.run_blocks(blocks, fn, "out/results.parquet")   # fn(block) -> columns
    table = archives.read_results("out/results.parquet")

- :mod:`.blocks`: :class:`Block`, the shared options (:class:`BlockOptions`: gaps,
  duplicates, level reference, block length) and how they are applied;
- :mod:`.readers`: one reader per format (Parquet, CSV, HDF5, NPY/NPZ, NoiseCapture,
  audio), :func:`open_archive`, :func:`open_many`;
- :mod:`.writer`: the crash-safe Parquet part files and their manifest;
- :mod:`.engine`: :func:`run_blocks`, :func:`read_results`.
"""

from __future__ import annotations

from .blocks import ArchiveError, Block, BlockOptions, BlockPosition, LevelReference, ReadStats, to_datetime64
from .engine import LEADING_COLUMNS, RunSummary, read_results, read_run_info, run_blocks
from .readers import (
    ArchiveFailure,
    ArchiveSet,
    ArrayReader,
    AudioReader,
    BlockReader,
    CsvReader,
    Hdf5Reader,
    NoiseCaptureReader,
    ParquetReader,
    auto_offset,
    nominal_frequencies,
    open_archive,
    open_many,
)
from .writer import ResultWriter, read_manifest

__all__ = [
    "ArchiveError",
    "ArchiveFailure",
    "ArchiveSet",
    "ArrayReader",
    "AudioReader",
    "Block",
    "BlockOptions",
    "BlockPosition",
    "BlockReader",
    "CsvReader",
    "Hdf5Reader",
    "LEADING_COLUMNS",
    "LevelReference",
    "NoiseCaptureReader",
    "ParquetReader",
    "ReadStats",
    "ResultWriter",
    "RunSummary",
    "auto_offset",
    "nominal_frequencies",
    "open_archive",
    "open_many",
    "read_manifest",
    "read_results",
    "read_run_info",
    "run_blocks",
    "to_datetime64",
]
