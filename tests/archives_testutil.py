"""Generators of small archive files for tests/test_archives_*.py, and a simple block function.

Everything is synthetic (random levels), written to pytest's tmp_path.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

NS = 1_000_000_000
T0 = np.datetime64("2024-03-01T12:00:00", "ns")
NC_FREQS = (
    100,
    125,
    160,
    200,
    250,
    315,
    400,
    500,
    630,
    800,
    1000,
    1250,
    1600,
    2000,
    2500,
    3150,
    4000,
    5000,
    6300,
    8000,
    10000,
    12500,
    16000,
)


def levels(n: int, n_bands: int = 29, seed: int = 0) -> np.ndarray:
    """Random levels in dB, (n, n_bands) float32, 30-70 dB."""
    return np.random.default_rng(seed).uniform(30.0, 70.0, (n, n_bands)).astype(np.float32)


def grid_times(n: int, period: float = 0.125, start: np.datetime64 = T0) -> np.ndarray:
    """(n,) int64 ns: a regular grid."""
    return int(start.astype(np.int64)) + np.rint(np.arange(n) * period * NS).astype(np.int64)


def write_parquet(
    path: Path,
    times_ns: np.ndarray,
    lv: np.ndarray,
    *,
    layout: str = "wide",
    time_type: str = "ts_utc",
    names: list[str] | None = None,
    row_group_size: int | None = None,
    extra: dict | None = None,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.array(np.asarray(times_ns, dtype=np.int64))
    if time_type == "ts_utc":
        tcol = t.cast(pa.timestamp("ns", tz="UTC"))
    elif time_type == "ts_naive_ms":
        tcol = pa.array(np.asarray(times_ns) // 1_000_000).cast(pa.timestamp("ms"))
    elif time_type == "int_ms":
        tcol = pa.array(np.asarray(times_ns) // 1_000_000)
    elif time_type == "iso":
        tcol = pa.array([str(np.datetime64(int(v), "ns")) + "Z" for v in times_ns])
    else:
        raise ValueError(time_type)
    cols = {"timestamp": tcol}
    if extra:
        cols.update(extra)
    if layout == "wide":
        names = names or [f"L{i}" for i in range(lv.shape[1])]
        for j, name in enumerate(names):
            cols[name] = pa.array(lv[:, j], pa.float32(), mask=np.isnan(lv[:, j]))
    else:
        cols["levels"] = pa.array([None if np.isnan(r).all() else r.tolist() for r in lv], pa.list_(pa.float32()))
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def write_csv(path: Path, times_ns: np.ndarray, lv: np.ndarray) -> Path:
    with open(path, "w") as f:
        f.write("time," + ",".join(f"b{i}" for i in range(lv.shape[1])) + "\n")
        for t, row in zip(times_ns, lv):
            cells = ["" if np.isnan(v) else f"{v:.9g}" for v in row]
            f.write(str(np.datetime64(int(t), "ns")) + "Z," + ",".join(cells) + "\n")
    return path


def write_noisecapture(
    path: Path,
    times_ms: np.ndarray,
    lv: np.ndarray,
    *,
    uuid: str = "3f1c2a9e-user",
    drop_band: str | None = None,
    extra_band: str | None = None,
    members: tuple[str, ...] = ("meta.properties", "track.geojson"),
) -> Path:
    """A NoiseCapture-style export: meta.properties + track.geojson (one Point per second)."""
    rng = np.random.default_rng(7)
    feats = []
    for k, (t, row) in enumerate(zip(times_ms, lv)):
        props = {
            "leq_mean": float(10 * np.log10(np.sum(10 ** (row / 10)))),
            "marker-color": "#B8D6D1",
            "accuracy": 12.0,
            "location_utc": int(t) - 300,
            "leq_utc": int(t),
            "leq_id": k + 1,
            "bearing": 215.0,
            "speed": 0.4,
        }
        for f, v in zip(NC_FREQS, row):
            props[f"leq_{f}"] = None if np.isnan(v) else float(v)
        if drop_band:
            props.pop(drop_band)
        if extra_band:
            props[extra_band] = 40.0
        geom = {"type": "Point", "coordinates": [4.9149 + rng.normal(0, 1e-4), 45.7853, 308.5]}
        feats.append({"type": "Feature", "geometry": geom if k % 5 else None, "properties": props})
    meta = (
        "#NoiseCapture export header file\n#Mon Mar 01 12:00:00 UTC 2024\n"
        "version_name=1.2.19\nbuild_date=1546300800000\nversion_number=54\n"
        "device_manufacturer=Google\ndevice_product=sargo\ndevice_model=Pixel 3a\n"
        f"uuid={uuid}\nrecord_utc={int(times_ms[0]) if len(times_ms) else 0}\nleq_mean=55.20\n"
        "gain_calibration=-3.50\ntime_length=" + str(len(times_ms)) + "\n"
        "user_profile=AMATEUR\ntags=road,test\\:escaped\n"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if "meta.properties" in members:
            zf.writestr("meta.properties", meta)
        if "track.geojson" in members:
            zf.writestr("track.geojson", json.dumps({"type": "FeatureCollection", "features": feats}, indent=2))
        zf.writestr("README.txt", "exported by a test")
    return path


def per_second(block) -> dict:
    """A deterministic block function: per transcoder chunk, the mean broadband level
    of the valid frames and the valid fraction."""
    fpc = block.band_spec.frames_per_chunk
    n = block.n_frames // fpc
    lv = block.levels.reshape(n, fpc, -1).astype(np.float64)
    valid = block.valid.reshape(n, fpc)
    with np.errstate(divide="ignore", invalid="ignore"):  # gap frames: NaN levels, masked below
        bb = 10 * np.log10(np.nansum(10 ** (lv / 10), axis=2))
        mean = np.where(valid.any(1), np.nansum(np.where(valid, bb, 0), 1) / np.maximum(valid.sum(1), 1), np.nan)
    return {
        "offset_s": np.arange(n) * fpc * block.frame_period,
        "window_s": fpc * block.frame_period,
        "mean_db": mean,
        "valid_fraction": valid.mean(axis=1),
    }


def valid_frames(blocks) -> tuple[np.ndarray, np.ndarray]:
    """(times_ns, levels) of every valid frame of ``blocks``, in order."""
    ts, lv = [], []
    for b in blocks:
        t = b.frame_times().astype(np.int64)
        ts.append(t[b.valid])
        lv.append(b.levels[b.valid])
    if not ts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(ts), np.concatenate(lv)
