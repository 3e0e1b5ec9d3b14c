"""Teacher-student dataset builder: audio folders -> a sharded, resumable on-disk cache.

``python -m training build-dataset AUDIO_DIR... -o CACHE_DIR --teacher yamnet|efficientat``

Every audio file is read (mono, any rate), peak-normalised as a whole (the paper's
``librosa.util.normalize``; here at the file's own rate, so that both resampled views get
the same gain; a silent file is left as is), resampled to each spec's rate
with the package's soxr resampler and cut into 1-s chunks (``band_spec.chunk_duration``)
on a regular grid; training files can also get seeded random-offset crops and a seeded
random gain. For each chunk the cache holds:

========== ======================= ===============================================================
``levels`` (n, 8, 29) float32       ``cense_fast`` third-octave levels, dB re full scale (db_offset 0)
``mel``    (n, T, n_mels) float32   the teacher's ground-truth Mel in its own units: ``yamnet`` (the
                                   official front end, first 96-frame patch of the chunk, T = 96) or
                                   ``efficientat`` (T = 100)
``probs``  (n, C) float32           the frozen teacher's sigmoid probabilities on that Mel
``file_id`` (n,) int32              the file's id in the manifest
``offset`` (n,) float64             chunk start in the file, seconds
``crop``   (n,) bool                True for an augmentation crop (False: the regular grid)
``gain_db`` (n,) float32            gain applied after peak normalisation
``split``  (n,) uint8               index into :data:`SPLITS`
========== ======================= ===============================================================

Layout: ``CACHE_DIR/manifest.json`` and ``CACHE_DIR/shards/shard-NNNNN/<array>.npy``. A
shard holds whole files only (about ``shard_size`` chunks), is written to a temporary
directory and renamed when complete, then recorded in the manifest (atomic rewrite).
So at most one shard is in memory, a killed build loses at most the shard in progress,
and a rerun skips every file already in the manifest (an unrecorded shard directory is
deleted and its files are redone). Unreadable, too short or non-finite files are
reported and skipped, never fatal.

The split is decided per file, deterministically from its key (``<dir name>/<relative
path>``), and never depends on the seed or on which other files exist: every file of a
held-out directory (default ``fold2``) is held out, every file of a training directory
(default ``fold1``) is trained on, a fixed hash-chosen fraction of the other
directories' files (e.g. the field recordings) is held out, and held-out files are divided between ``valid``
(model selection) and ``eval`` (reported metrics). Held-out files get no crops and no gain.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from spectral_transcoder import frontends
from spectral_transcoder._validation import resample
from spectral_transcoder.analysis import third_octave
from spectral_transcoder.errors import InvalidInputError, ModelError, SpecMismatchError
from spectral_transcoder.metadata import Label
from spectral_transcoder.specs import BandSpec, MelSpec, get_band_spec, get_mel_spec, spec_from_json

from .paths import shared_dir

__all__ = [
    "CACHE_FORMAT",
    "SPLITS",
    "AUDIO_EXTENSIONS",
    "TEACHERS",
    "Teacher",
    "load_teacher",
    "BuildConfig",
    "BuildReport",
    "build_dataset",
    "assign_split",
    "discover_audio",
    "read_audio",
    "file_chunks",
    "read_manifest",
    "ChunkStore",
    "progress_bar",
    "add_parser",
]

CACHE_FORMAT = "spectral_transcoder.training.cache/1"
SPLITS = ("train", "valid", "eval")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")
ARRAYS = ("levels", "mel", "probs", "file_id", "offset", "crop", "gain_db", "split")
MANIFEST = "manifest.json"
SHARDS = "shards"

#: Teacher name -> (converter KIND of training.convert, default file under the models
#: folder, its Mel spec, the label CSV options it needs).
TEACHERS: dict[str, dict[str, str]] = {
    "yamnet": {"kind": "yamnet-tflite", "file": "yamnet_int8_perchannel.tflite", "spec": "yamnet",
               "labels": "class_labels_indices.csv", "class_map": "yamnet_class_map.csv"},
    "efficientat": {"kind": "efficientat", "file": "mn04_as_mAP_432.pt", "spec": "efficientat",
                    "labels": "class_labels_indices.csv"},
}
#: Where the teacher files are looked for by default ($ST_SHARED_DIR, else ../shared; training/paths.py).
DEFAULT_MODELS_DIR = shared_dir() / "models"


# ---------------------------------------------------------------------- teacher
@dataclass
class Teacher:
    """A frozen classifier and the Mel representation it reads.

    ``module`` maps time-major Mels ``(B, T, n_mels)`` to a
    :class:`~training.nets.ClassifierOutput` (``probs`` first). ``sha256`` identifies
    the weights (the source file's checksum); caches and runs record it so that a
    trainer cannot silently use another teacher than the cache was built with.
    """

    name: str
    module: nn.Module
    mel_spec: MelSpec
    source: str
    sha256: str
    n_classes: int
    labels: list[Label] = field(default_factory=list)
    kind: str = "custom"
    source_path: str = ""

    def __post_init__(self) -> None:
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def probs(self, mel: np.ndarray, *, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
        """Sigmoid probabilities ``(N, C)`` float32 of Mels ``(N, T, n_mels)``."""
        return self._outputs(mel, "probs", batch_size, device)

    def logits(self, mel: np.ndarray, *, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
        """Pre-sigmoid scores ``(N, C)`` float32 of Mels ``(N, T, n_mels)``."""
        return self._outputs(mel, "logits", batch_size, device)

    @torch.no_grad()
    def _outputs(self, mel: np.ndarray, name: str, batch_size: int, device: str | torch.device) -> np.ndarray:
        self.module.to(device)
        out = []
        for s in range(0, mel.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(mel[s : s + batch_size], dtype=np.float32)).to(device)
            out.append(getattr(self.module(x), name).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.n_classes), np.float32)
        return np.concatenate(out)

    def describe(self) -> dict[str, Any]:
        """JSON description (what the manifest and the model metadata record)."""
        return {"name": self.name, "kind": self.kind, "source": self.source, "source_path": self.source_path,
                "sha256": self.sha256, "n_classes": self.n_classes, "mel_spec": self.mel_spec.name}


def load_teacher(name: str, source: str | os.PathLike | None = None, *,
                 models_dir: str | os.PathLike | None = None) -> Teacher:
    """Load a teacher with h3's converters (:func:`training.convert.build`).

    Args:
        name: ``"yamnet"`` (``yamnet_int8_perchannel.tflite``, closer to float YAMNet;
            the official ``yamnet`` front end) or ``"efficientat"`` (``mn04_as_mAP_432.pt``).
        source: the checkpoint; default ``<models_dir>/<the file above>``.
        models_dir: where the default checkpoint and the label CSVs are looked for
            (default ``../shared/models``, beside the checkpoint when ``source`` is given).
    """
    from .convert import build

    if name not in TEACHERS:
        raise ModelError(f"unknown teacher {name!r}; choose one of: {', '.join(TEACHERS)}")
    info = TEACHERS[name]
    if source is None:
        src = Path(models_dir or DEFAULT_MODELS_DIR) / info["file"]
    else:
        src = Path(source)
    folder = Path(models_dir) if models_dir is not None else src.parent
    labels = folder / info["labels"]
    kwargs: dict[str, Any] = {"labels": labels if labels.is_file() else None}
    if "class_map" in info:
        kwargs["yamnet_class_map"] = folder / info["class_map"]
        kwargs["input_spec"] = info["spec"]
    c = build(info["kind"], src, **kwargs)
    return Teacher(name=name, module=c.module, mel_spec=get_mel_spec(info["spec"]), source=src.name,
                   sha256=c.metadata.source_sha256, n_classes=int(c.module.n_classes), labels=c.metadata.labels,
                   kind=info["kind"], source_path=str(src.resolve()))


# ---------------------------------------------------------------------- config
@dataclass(frozen=True)
class BuildConfig:
    """What determines the cache's content (a resumed build must use the same)."""

    teacher: str
    band_spec: str = "cense_fast"
    crops_per_chunk: int = 0
    """Random-offset crops per regular chunk, training files only."""
    gain_db: tuple[float, float] | None = None
    """Uniform random gain range in dB applied to every training chunk (None: no gain)."""
    seed: int = 0
    heldout_dirs: tuple[str, ...] = ("fold2",)
    """Audio directories (by name) held out entirely."""
    train_dirs: tuple[str, ...] = ("fold1",)
    """Audio directories (by name) used entirely for training."""
    heldout_fraction: float = 0.25
    """Fraction of the other directories' files held out (chosen by a hash of the key)."""
    eval_fraction: float = 0.5
    """Fraction of held-out files in ``eval`` (the rest are ``valid``)."""
    peak_normalise: bool = True

    def __post_init__(self) -> None:
        if self.crops_per_chunk < 0:
            raise InvalidInputError(f"crops_per_chunk must be >= 0, got {self.crops_per_chunk}")
        for name in ("heldout_fraction", "eval_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidInputError(f"{name} must be in [0, 1], got {v}")
        if set(self.heldout_dirs) & set(self.train_dirs):
            raise InvalidInputError(f"directories both held out and trained on: {set(self.heldout_dirs) & set(self.train_dirs)}")
        if self.gain_db is not None:
            lo, hi = self.gain_db
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise InvalidInputError(f"gain_db must be a finite range (low, high), got {self.gain_db}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["heldout_dirs"] = list(self.heldout_dirs)
        d["train_dirs"] = list(self.train_dirs)
        d["gain_db"] = list(self.gain_db) if self.gain_db is not None else None
        return d


def _unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from strings (stable across runs and machines)."""
    h = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_split(key: str, dir_name: str, config: BuildConfig) -> str:
    """``train``, ``valid`` or ``eval`` for the file ``key`` of directory ``dir_name``.

    Depends only on the key and the split parameters (not on the seed, the file order
    or the other files), so adding files or resuming never moves a file between splits.
    """
    if dir_name in config.train_dirs:
        return "train"
    held = dir_name in config.heldout_dirs or _unit_hash("heldout", key) < config.heldout_fraction
    if not held:
        return "train"
    return "eval" if _unit_hash("eval", key) < config.eval_fraction else "valid"


# ---------------------------------------------------------------------- audio
def discover_audio(audio_dirs: Sequence[str | os.PathLike], *,
                   max_files_per_dir: int | None = None) -> list[tuple[str, str, Path]]:
    """Audio files under each directory (recursively), as ``(key, dir_name, path)``.

    ``key`` is ``<dir name>/<path relative to the dir>``. With ``max_files_per_dir`` a
    fixed hash-chosen subset of each directory is kept (the same subset every time,
    spread over the whole directory). Sorted by key.
    """
    out: list[tuple[str, str, Path]] = []
    names: dict[str, Path] = {}
    for d in audio_dirs:
        root = Path(d)
        if not root.is_dir():
            raise InvalidInputError(f"audio directory {str(root)!r} does not exist or is not a directory")
        name = root.resolve().name
        if name in names and names[name] != root.resolve():
            raise InvalidInputError(
                f"two audio directories are named {name!r} ({names[name]} and {root.resolve()}): file keys "
                "are '<dir name>/<relative path>', so directory names must differ"
            )
        names[name] = root.resolve()
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        entries = [(f"{name}/{p.relative_to(root).as_posix()}", name, p) for p in files]
        if max_files_per_dir is not None:
            entries = sorted(entries, key=lambda e: _unit_hash("subset", e[0]))[: max(0, max_files_per_dir)]
        out.extend(entries)
    return sorted(out)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float32 samples (channel mean) and the sample rate of an audio file."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(sr)


def _chunk_lengths(band: BandSpec, mel: MelSpec) -> tuple[int, int, int]:
    """Samples per chunk at the band and Mel rates, and the common grid rate (gcd)."""
    dur = band.chunk_duration
    lb = band.frames_per_chunk * band.hop_length
    lm = dur * mel.sample_rate
    if abs(lm - round(lm)) > 1e-9:
        raise InvalidInputError(f"a {dur} s chunk is not a whole number of samples at {mel.sample_rate} Hz")
    return lb, int(round(lm)), math.gcd(band.sample_rate, mel.sample_rate)


def _first_patch(mel: np.ndarray, spec: MelSpec) -> np.ndarray:
    """The Mel the classifier sees for one chunk: the first patch (YAMNet) or all frames."""
    if spec.patch_frames is not None:
        return frontends.patches(mel, spec)[..., 0, :, :]
    if mel.shape[-2] != spec.chunk_frames:
        raise InvalidInputError(f"a chunk gave {mel.shape[-2]} {spec.name!r} frames, expected {spec.chunk_frames}")
    return mel


def file_chunks(
    audio: np.ndarray,
    sample_rate: int,
    band_spec: BandSpec,
    mel_spec: MelSpec,
    *,
    crops_per_chunk: int = 0,
    gain_db: tuple[float, float] | None = None,
    rng: np.random.Generator | None = None,
    peak_normalise: bool = True,
    n_threads: int = 0,
) -> dict[str, np.ndarray]:
    """Levels and target Mels of one file's 1-s chunks (no teacher).

    The file is peak-normalised as a whole (skipped when silent), resampled to both
    specs' rates, then cut into ``floor(duration)`` regular chunks at offsets 0, 1, 2 s
    and ``crops_per_chunk`` times as many crops at random offsets (drawn on the common
    grid of both rates, so both views cover the same samples). With ``gain_db`` every
    chunk is scaled by a random gain in that range. Returns ``levels`` (n, F, n_bands),
    ``mel`` (n, T, n_mels), ``offset`` (n,) s, ``crop`` (n,) bool and ``gain_db`` (n,),
    regular chunks first; n = 0 for a file shorter than one chunk.
    """
    x = np.asarray(audio, dtype=np.float32)
    if peak_normalise:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > 0.0:
            x = x / peak
    lb, lm, g = _chunk_lengths(band_spec, mel_spec)
    xb = resample(x, float(sample_rate), band_spec.sample_rate)
    xm = resample(x, float(sample_rate), mel_spec.sample_rate)
    # Lengths on the common grid (g Hz): chunk offsets k are exact at both rates.
    len_g = min(xb.shape[-1] * g // band_spec.sample_rate, xm.shape[-1] * g // mel_spec.sample_rate)
    chunk_g = lb * g // band_spec.sample_rate
    n_regular = len_g // chunk_g
    offsets = [i * chunk_g for i in range(n_regular)]
    crop = [False] * n_regular
    if crops_per_chunk and n_regular:
        if rng is None:
            raise InvalidInputError("random crops need an rng")
        k = rng.integers(0, len_g - chunk_g + 1, size=crops_per_chunk * n_regular)
        offsets += [int(v) for v in k]
        crop += [True] * len(k)
    n = len(offsets)
    gains = np.zeros(n, np.float32)
    if gain_db is not None and n:
        if rng is None:
            raise InvalidInputError("random gains need an rng")
        gains = rng.uniform(gain_db[0], gain_db[1], size=n).astype(np.float32)
    if n == 0:
        return {"levels": np.zeros((0, band_spec.frames_per_chunk, band_spec.n_bands), np.float32),
                "mel": np.zeros((0, mel_spec.chunk_frames, mel_spec.n_mels), np.float32),
                "offset": np.zeros(0), "crop": np.zeros(0, bool), "gain_db": gains}
    rb, rm = band_spec.sample_rate // g, mel_spec.sample_rate // g
    cb = np.stack([xb[o * rb : o * rb + lb] for o in offsets])
    cm = np.stack([xm[o * rm : o * rm + lm] for o in offsets])
    if gain_db is not None:
        lin = (10.0 ** (gains.astype(np.float64) / 20.0)).astype(np.float32)[:, None]
        cb, cm = cb * lin, cm * lin
    levels = third_octave(cb, band_spec.sample_rate, band_spec, n_threads=n_threads)
    mel = _first_patch(frontends.mel(cm, mel_spec.sample_rate, mel_spec, n_threads=n_threads), mel_spec)
    return {"levels": np.ascontiguousarray(levels, np.float32), "mel": np.ascontiguousarray(mel, np.float32),
            "offset": np.asarray(offsets, np.float64) / g, "crop": np.asarray(crop, bool), "gain_db": gains}


# ---------------------------------------------------------------------- manifest
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    os.replace(tmp, path)


def read_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a cache (raises :class:`InvalidInputError` if it is not one)."""
    p = Path(cache_dir) / MANIFEST
    if not p.is_file():
        raise InvalidInputError(f"{str(cache_dir)!r} is not a dataset cache (no {MANIFEST}); build one with "
                                "`python -m training build-dataset AUDIO_DIR... -o CACHE_DIR`")
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{p}: unreadable manifest: {exc}") from exc
    if m.get("format") != CACHE_FORMAT:
        raise InvalidInputError(f"{p}: format {m.get('format')!r}, expected {CACHE_FORMAT!r}")
    return m


def _fingerprint(config: BuildConfig, band: BandSpec, mel: MelSpec, teacher: Teacher) -> dict[str, Any]:
    return {"config": config.to_dict(), "band_spec": band.to_dict(), "mel_spec": mel.to_dict(),
            "teacher_sha256": teacher.sha256}


def _check_resumable(m: dict[str, Any], fp: dict[str, Any], cache_dir: Path) -> None:
    old = {"config": m["config"], "band_spec": m["band_spec"], "mel_spec": m["mel_spec"],
           "teacher_sha256": m["teacher"]["sha256"]}
    diff = [k for k in fp if fp[k] != old[k]]
    if diff:
        detail = []
        if "config" in diff:
            detail += [f"{k}: {old['config'].get(k)!r} -> {v!r}" for k, v in fp["config"].items()
                       if old["config"].get(k) != v]
        raise SpecMismatchError(
            f"{cache_dir} was built with different settings ({', '.join(diff)}{': ' if detail else ''}"
            f"{'; '.join(detail)}); resume with the same settings or write a new cache directory"
        )


@dataclass
class BuildReport:
    """What one :func:`build_dataset` call did."""

    cache_dir: Path
    added: list[str] = field(default_factory=list)
    already_done: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    new_shards: list[str] = field(default_factory=list)
    removed_partial: list[str] = field(default_factory=list)
    seconds: float = 0.0
    chunks_by_split: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{self.cache_dir}: {len(self.added)} file(s) added, {self.already_done} already done, "
            f"{len(self.skipped)} skipped, {len(self.new_shards)} new shard(s) in {self.seconds:.1f} s; "
            "chunks per split: " + ", ".join(f"{k} {v}" for k, v in self.chunks_by_split.items())
        ]
        if self.removed_partial:
            lines.append(f"removed unfinished shard(s) from an interrupted build: {', '.join(self.removed_partial)}")
        for key, why in self.skipped.items():
            lines.append(f"  skipped {key}: {why}")
        return "\n".join(lines)


class _ShardWriter:
    """Buffers whole files' chunks and writes a shard when it holds ``shard_size`` chunks."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], shard_size: int, report: BuildReport) -> None:
        self.dir = cache_dir / SHARDS
        self.m, self.size, self.report = manifest, shard_size, report
        self.buf: list[dict[str, np.ndarray]] = []
        self.files: list[tuple[str, dict[str, Any]]] = []
        self.rows = 0

    def add(self, key: str, entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.buf.append(arrays)
        self.files.append((key, entry))
        self.rows += arrays["levels"].shape[0]
        if self.rows >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.files:
            return
        name = f"shard-{len(self.m['shards']):05d}"
        final = self.dir / name
        if final.exists():  # left by a build killed between the rename and the manifest update
            shutil.rmtree(final)
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        rows = self.rows
        if rows:
            for k in ARRAYS:
                np.save(tmp / f"{k}.npy", np.concatenate([b[k] for b in self.buf]))
        split = np.concatenate([b["split"] for b in self.buf]) if rows else np.zeros(0, np.uint8)
        os.replace(tmp, final)
        self.m["shards"].append({
            "name": name, "rows": int(rows),
            "rows_per_split": {s: int(np.sum(split == i)) for i, s in enumerate(SPLITS)},
        })
        for key, entry in self.files:
            entry["shard"] = name if entry["n_chunks"] + entry["n_crops"] else None
            self.m["files"][key] = entry
        self.m["next_file_id"] = max([e["id"] for _, e in self.files] + [self.m["next_file_id"] - 1]) + 1
        self.m["updated"] = _now()
        self.m["counts"] = _counts(self.m)
        _write_json_atomic(self.dir.parent / MANIFEST, self.m)
        self.report.new_shards.append(name)
        self.buf, self.files, self.rows = [], [], 0


def _clean_partial(cache_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Remove shard directories the manifest does not list (a killed build's leftovers)."""
    shard_dir = cache_dir / SHARDS
    known = {s["name"] for s in manifest["shards"]}
    removed = []
    if shard_dir.is_dir():
        for p in sorted(shard_dir.iterdir()):
            if p.name not in known:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
    return removed


def build_dataset(
    audio_dirs: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    *,
    teacher: Teacher,
    config: BuildConfig | None = None,
    shard_size: int = 1024,
    max_files_per_dir: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    n_threads: int = 0,
    progress: bool = True,
) -> BuildReport:
    """Build or resume the cache ``cache_dir`` from the audio under ``audio_dirs``.

    Args:
        audio_dirs: folders searched recursively for :data:`AUDIO_EXTENSIONS` files.
        cache_dir: output folder (created); an existing cache is resumed: files in its
            manifest are skipped, unrecorded shard directories are deleted and redone.
        teacher: the frozen classifier (:func:`load_teacher`); its ``mel_spec`` is the target.
        config: :class:`BuildConfig` (default: ``BuildConfig(teacher.name)``); must equal
            the one an existing cache was built with (else :class:`SpecMismatchError`).
        shard_size: chunks per shard (shards hold whole files, so slightly more).
        max_files_per_dir: keep a fixed hash-chosen subset of each directory.
        batch_size: teacher batch size. device: torch device of the teacher.
        n_threads: threads of the C++ kernels (0 = automatic).
        progress: show a tqdm bar on stderr.

    Returns:
        A :class:`BuildReport`; the manifest records everything durable.
    """
    t0 = time.perf_counter()
    cache = Path(cache_dir)
    config = config or BuildConfig(teacher=teacher.name)
    if config.teacher != teacher.name:
        raise InvalidInputError(f"config.teacher is {config.teacher!r} but the teacher is {teacher.name!r}")
    if shard_size < 1:
        raise InvalidInputError(f"shard_size must be >= 1, got {shard_size}")
    band = get_band_spec(config.band_spec)
    mel = teacher.mel_spec
    _chunk_lengths(band, mel)
    files = discover_audio(audio_dirs, max_files_per_dir=max_files_per_dir)
    if not files:
        raise InvalidInputError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {', '.join(map(str, audio_dirs))}")
    fp = _fingerprint(config, band, mel, teacher)
    report = BuildReport(cache)
    if (cache / MANIFEST).exists():
        m = read_manifest(cache)
        _check_resumable(m, fp, cache)
    else:
        cache.mkdir(parents=True, exist_ok=True)
        m = {
            "format": CACHE_FORMAT, "created": _now(), "updated": _now(),
            "config": fp["config"], "band_spec": fp["band_spec"], "mel_spec": fp["mel_spec"],
            "teacher": {**teacher.describe(), "labels": [[lb.index, lb.mid, lb.name] for lb in teacher.labels]},
            "arrays": {
                "levels": f"(n, {band.frames_per_chunk}, {band.n_bands}) float32 dB re full scale "
                          f"(db_offset {band.db_offset:g}), {band.name}",
                "mel": f"(n, {mel.chunk_frames}, {mel.n_mels}) float32, {mel.name} units"
                       + (" (first patch of the chunk)" if mel.patch_frames else ""),
                "probs": f"(n, {teacher.n_classes}) float32 teacher sigmoid probabilities",
                "file_id": "(n,) int32", "offset": "(n,) float64 s", "crop": "(n,) bool",
                "gain_db": "(n,) float32", "split": f"(n,) uint8 index into {list(SPLITS)}",
            },
            "split_rule": (
                f"per file key '<dir>/<relative path>': every file of the directories {list(config.heldout_dirs)} "
                f"is held out, every file of {list(config.train_dirs)} is trained on, and a sha256-chosen "
                f"{config.heldout_fraction:g} of the other directories' files are held out; held-out files "
                f"go to eval with probability {config.eval_fraction:g} (by hash), else valid; "
                "crops and gains on train files only"
            ),
            "audio_dirs": [], "files": {}, "skipped": {}, "shards": [], "next_file_id": 0,
            "software": {"torch": torch.__version__, "numpy": np.__version__},
        }
        _write_json_atomic(cache / MANIFEST, m)
    report.removed_partial = _clean_partial(cache, m)
    for d in audio_dirs:
        rec = {"name": Path(d).resolve().name, "path": str(Path(d).resolve())}
        if rec not in m["audio_dirs"]:
            m["audio_dirs"].append(rec)

    todo = [(k, dn, p) for k, dn, p in files if k not in m["files"]]
    report.already_done = len(files) - len(todo)
    writer = _ShardWriter(cache, m, shard_size, report)
    next_id = int(m["next_file_id"])
    bar = progress_bar(todo, progress, "files")
    for key, dir_name, path in bar:
        split = assign_split(key, dir_name, config)
        try:
            arrays, entry = _process_file(key, path, split, next_id, band, mel, teacher, config,
                                          batch_size=batch_size, device=device, n_threads=n_threads)
        except _Skip as why:
            report.skipped[key] = str(why)
            m["skipped"][key] = {"path": str(path), "reason": str(why)}
            continue
        m["skipped"].pop(key, None)
        writer.add(key, entry, arrays)
        report.added.append(key)
        next_id += 1
    writer.flush()
    # Record the skipped files even when no shard was written.
    m["updated"] = _now()
    m["counts"] = _counts(m)
    _write_json_atomic(cache / MANIFEST, m)
    report.chunks_by_split = m["counts"]["chunks"]
    report.seconds = time.perf_counter() - t0
    return report


def _counts(m: dict[str, Any]) -> dict[str, Any]:
    files = {s: 0 for s in SPLITS}
    for e in m["files"].values():
        files[e["split"]] += 1
    chunks = {s: sum(sh["rows_per_split"][s] for sh in m["shards"]) for s in SPLITS}
    return {"files": files, "chunks": chunks, "skipped": len(m["skipped"])}


class _Skip(Exception):
    """A file that cannot go into the cache (the message says why)."""


def _process_file(key: str, path: Path, split: str, file_id: int, band: BandSpec, mel: MelSpec,
                  teacher: Teacher, config: BuildConfig, *, batch_size: int, device: str,
                  n_threads: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        audio, sr = read_audio(path)
    except Exception as exc:  # soundfile / libsndfile raise several types on corrupt data
        raise _Skip(f"unreadable audio ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    if not np.isfinite(audio).all():
        raise _Skip("the audio holds NaN or Inf samples")
    duration = audio.shape[0] / sr if sr else 0.0
    train = split == "train"
    # One rng per file from (seed, key): a resumed or partial build draws the same crops.
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{config.seed}\x1f{key}".encode()).digest()[:8], "big"))
    try:
        ch = file_chunks(audio, sr, band, mel, crops_per_chunk=config.crops_per_chunk if train else 0,
                         gain_db=config.gain_db if train else None, rng=rng,
                         peak_normalise=config.peak_normalise, n_threads=n_threads)
    except InvalidInputError as exc:
        raise _Skip(f"cannot analyse: {exc}") from exc
    n = ch["levels"].shape[0]
    if n == 0:
        raise _Skip(f"shorter than one {band.chunk_duration:g}-s chunk ({duration:.3f} s)")
    probs = teacher.probs(ch["mel"], batch_size=batch_size, device=device)
    for name, a in (("levels", ch["levels"]), ("mel", ch["mel"]), ("probs", probs)):
        if not np.isfinite(a).all():
            raise _Skip(f"non-finite {name} (this is a bug: the spec floors should prevent it)")
    arrays = {
        "levels": ch["levels"], "mel": ch["mel"], "probs": probs.astype(np.float32),
        "file_id": np.full(n, file_id, np.int32), "offset": ch["offset"], "crop": ch["crop"],
        "gain_db": ch["gain_db"], "split": np.full(n, SPLITS.index(split), np.uint8),
    }
    n_crops = int(ch["crop"].sum())
    entry = {"id": file_id, "path": str(path.resolve()), "split": split, "n_chunks": n - n_crops,
             "n_crops": n_crops, "duration_s": round(duration, 6), "sample_rate": sr,
             "peak": float(np.max(np.abs(audio))) if audio.size else 0.0}
    return arrays, entry


def progress_bar(items: Sequence[Any], enabled: bool, unit: str) -> Iterable[Any]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled`` (and tqdm is installed)."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the archives/training extras
        return items
    return tqdm(items, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------- reading
class ChunkStore:
    """Read access to a cache: memory-mapped shards, rows selected by split.

    Rows are addressed by a global index (shards in manifest order). Arrays are
    memory-mapped, so only the rows a batch reads are paged in.
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        self.band_spec: BandSpec = spec_from_json(json.dumps(self.manifest["band_spec"]))  # type: ignore[assignment]
        self.mel_spec: MelSpec = spec_from_json(json.dumps(self.manifest["mel_spec"]))  # type: ignore[assignment]
        self.teacher_info: dict[str, Any] = self.manifest["teacher"]
        self._arrays: list[dict[str, np.ndarray]] = []
        starts = [0]
        for sh in self.manifest["shards"]:
            d = self.dir / SHARDS / sh["name"]
            if sh["rows"]:
                arrs = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
                if arrs["levels"].shape[0] != sh["rows"]:
                    raise InvalidInputError(f"{d}: {arrs['levels'].shape[0]} rows, the manifest says {sh['rows']}")
            else:
                arrs = {}
            self._arrays.append(arrs)
            starts.append(starts[-1] + sh["rows"])
        self._starts = np.asarray(starts, np.int64)
        self.n_rows = int(starts[-1])
        self.files_by_id = {e["id"]: k for k, e in self.manifest["files"].items()}

    def _column(self, name: str) -> np.ndarray:
        parts = [a[name] for a in self._arrays if a]
        if not parts:
            return np.zeros(0)
        return np.concatenate([np.asarray(p) for p in parts])

    def rows(self, split: str, *, regular_only: bool = False) -> np.ndarray:
        """Global row indices of ``split`` (``regular_only``: without crops), in storage order."""
        if split not in SPLITS:
            raise InvalidInputError(f"split must be one of {SPLITS}, got {split!r}")
        if self.n_rows == 0:
            return np.zeros(0, np.int64)
        mask = self._column("split") == SPLITS.index(split)
        if regular_only:
            mask &= ~self._column("crop").astype(bool)
        return np.flatnonzero(mask).astype(np.int64)

    def get(self, rows: np.ndarray, fields: Sequence[str] = ("levels", "mel", "probs")) -> dict[str, np.ndarray]:
        """The arrays of ``rows`` (any order), as in-memory copies."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise InvalidInputError(f"rows out of range [0, {self.n_rows})")
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for f in fields:
            if f not in ARRAYS:
                raise InvalidInputError(f"unknown field {f!r}; the cache holds {ARRAYS}")
            first = next((a[f] for a in self._arrays if a), None)
            shape = (rows.size, *first.shape[1:]) if first is not None else (0,)
            res = np.empty(shape, first.dtype if first is not None else np.float32)
            for s in np.unique(shard):
                sel = np.flatnonzero(shard == s)
                local = rows[sel] - self._starts[s]
                order = np.argsort(local, kind="stable")  # memmap reads in increasing order
                res[sel[order]] = self._arrays[s][f][local[order]]
            out[f] = res
        return out

    def file_groups(self, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Group ``rows`` by file: (file ids, per file the positions into ``rows`` ordered by offset)."""
        meta = self.get(rows, ("file_id", "offset"))
        ids = np.unique(meta["file_id"])
        groups = []
        for i in ids:
            pos = np.flatnonzero(meta["file_id"] == i)
            groups.append(pos[np.argsort(meta["offset"][pos], kind="stable")])
        return ids, groups


# ---------------------------------------------------------------------- CLI
def add_parser(sub: Any) -> None:
    """Register ``build-dataset`` on an argparse subparsers object."""
    p = sub.add_parser(
        "build-dataset",
        help="build (or resume) a teacher-student dataset cache from audio folders",
        description="Cut audio into 1-s chunks and store, per chunk, the cense_fast third-octave levels (dBFS), "
        "the teacher's ground-truth Mel and the frozen teacher's probabilities, in resumable shards with a "
        "JSON manifest (files done, shards, specs, teacher sha256, split). Rerun the same command to resume.",
    )
    p.add_argument("audio_dirs", nargs="+", metavar="AUDIO_DIR", help="folders of audio files (searched recursively)")
    p.add_argument("-o", "--output", required=True, metavar="CACHE_DIR", help="cache directory (created or resumed)")
    p.add_argument("--teacher", required=True, choices=sorted(TEACHERS), help="teacher classifier")
    p.add_argument("--teacher-source", metavar="FILE",
                   help="teacher checkpoint (default ../shared/models/yamnet_int8_perchannel.tflite or "
                        "mn04_as_mAP_432.pt); the label CSVs are read from the same folder")
    p.add_argument("--crops-per-chunk", type=int, default=0,
                   help="random-offset crops per regular 1-s chunk, training files only (default 0)")
    p.add_argument("--gain-db", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="random gain range in dB for training chunks (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and gains (default 0)")
    p.add_argument("--heldout-dir", action="append", metavar="NAME",
                   help="directory name held out entirely (repeatable; default fold2)")
    p.add_argument("--train-dir", action="append", metavar="NAME",
                   help="directory name used entirely for training (repeatable; default fold1)")
    p.add_argument("--heldout-fraction", type=float, default=0.25,
                   help="fraction of the other directories' files held out (default 0.25)")
    p.add_argument("--eval-fraction", type=float, default=0.5,
                   help="fraction of held-out files in 'eval' (the rest: 'valid'; default 0.5)")
    p.add_argument("--max-files-per-dir", type=int, metavar="N", help="fixed hash-chosen subset of N files per folder")
    p.add_argument("--shard-size", type=int, default=1024, help="chunks per shard (default 1024)")
    p.add_argument("--batch-size", type=int, default=64, help="teacher batch size (default 64)")
    p.add_argument("--device", default="cpu", help="torch device of the teacher (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch and kernel threads (0 = default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: Any) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher, args.teacher_source)
    config = BuildConfig(
        teacher=args.teacher, crops_per_chunk=args.crops_per_chunk,
        gain_db=tuple(args.gain_db) if args.gain_db else None, seed=args.seed,
        heldout_dirs=tuple(args.heldout_dir) if args.heldout_dir else ("fold2",),
        train_dirs=tuple(args.train_dir) if args.train_dir else ("fold1",),
        heldout_fraction=args.heldout_fraction, eval_fraction=args.eval_fraction,
    )
    report = build_dataset(args.audio_dirs, args.output, teacher=teacher, config=config,
                           shard_size=args.shard_size, max_files_per_dir=args.max_files_per_dir,
                           batch_size=args.batch_size, device=args.device, n_threads=args.threads,
                           progress=not args.no_progress)
    print(report.summary())
    return 0
