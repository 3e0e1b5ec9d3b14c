"""Teacher-student dataset builder: audio folders -> a sharded, resumable on-disk cache.

``python -m training build-dataset AUDIO_DIR... -o CACHE_DIR --teacher yamnet|efficientat``

Every audio file is cut into 1-s chunks by :func:`training.chunks.file_chunks` (peak-normalised
as a whole, resampled to each spec's rate; training files can also get seeded random-offset
crops and a seeded random gain), and the frozen teacher (:mod:`training.teachers`) labels each
chunk's ground-truth Mel. The cache's arrays, layout and reader are in :mod:`training.cache`:
shards hold whole files, are renamed into place when complete and recorded in the manifest,
so a killed build loses at most the shard in progress and a rerun skips every file already
recorded. Unreadable, too short or non-finite files are reported and skipped, never fatal.

The split is decided per file, deterministically from its key (``<dir name>/<relative
path>``), by :func:`training.dataset_split.assign_split` (``train``, ``valid`` for model
selection, ``eval`` for reported metrics); that module also finds the audio files and holds
the build's settings (:class:`~training.dataset_split.BuildConfig`). Held-out files get no
crops and no gain.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_transcoder.errors import InvalidInputError, SpecMismatchError
from spectral_transcoder.specs import BandSpec, MelSpec, get_band_spec

from .cache import CACHE_FORMAT, MANIFEST, SPLITS, ShardWriter, clean_partial, read_manifest, save_manifest, timestamp
from .chunks import chunk_lengths, file_chunks, read_audio
from .dataset_split import AUDIO_EXTENSIONS, BuildConfig, assign_split, discover_audio
from .runs import progress_bar, write_json_atomic
from .teachers import TEACHERS, Teacher, load_teacher

__all__ = [
    "BuildReport",
    "build_dataset",
    "add_parser",
]


# ---------------------------------------------------------------------- build
def _fingerprint(config: BuildConfig, band: BandSpec, mel: MelSpec, teacher: Teacher) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "band_spec": band.to_dict(),
        "mel_spec": mel.to_dict(),
        "teacher_sha256": teacher.sha256,
    }


def _check_resumable(m: dict[str, Any], fp: dict[str, Any], cache_dir: Path) -> None:
    old = {
        "config": m["config"],
        "band_spec": m["band_spec"],
        "mel_spec": m["mel_spec"],
        "teacher_sha256": m["teacher"]["sha256"],
    }
    diff = [k for k in fp if fp[k] != old[k]]
    if diff:
        detail = []
        if "config" in diff:
            detail += [
                f"{k}: {old['config'].get(k)!r} -> {v!r}" for k, v in fp["config"].items() if old["config"].get(k) != v
            ]
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
        audio_dirs: folders searched recursively for :data:`~training.dataset_split.AUDIO_EXTENSIONS` files.
        cache_dir: output folder (created); an existing cache is resumed: files in its
            manifest are skipped, unrecorded shard directories are deleted and redone.
        teacher: the frozen classifier (:func:`load_teacher`); its ``mel_spec`` is the target.
        config: :class:`~training.dataset_split.BuildConfig` (default: ``BuildConfig(teacher.name)``); must equal
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
    chunk_lengths(band, mel)
    files = discover_audio(audio_dirs, max_files_per_dir=max_files_per_dir)
    if not files:
        raise InvalidInputError(
            f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {', '.join(map(str, audio_dirs))}"
        )
    fp = _fingerprint(config, band, mel, teacher)
    report = BuildReport(cache)
    if (cache / MANIFEST).exists():
        m = read_manifest(cache)
        _check_resumable(m, fp, cache)
    else:
        cache.mkdir(parents=True, exist_ok=True)
        m = {
            "format": CACHE_FORMAT,
            "created": timestamp(),
            "updated": timestamp(),
            "config": fp["config"],
            "band_spec": fp["band_spec"],
            "mel_spec": fp["mel_spec"],
            "teacher": {**teacher.describe(), "labels": [[lb.index, lb.mid, lb.name] for lb in teacher.labels]},
            "arrays": {
                "levels": f"(n, {band.frames_per_chunk}, {band.n_bands}) float32 dB re full scale "
                f"(db_offset {band.db_offset:g}), {band.name}",
                "mel": f"(n, {mel.chunk_frames}, {mel.n_mels}) float32, {mel.name} units"
                + (" (first patch of the chunk)" if mel.patch_frames else ""),
                "probs": f"(n, {teacher.n_classes}) float32 teacher sigmoid probabilities",
                "file_id": "(n,) int32",
                "offset": "(n,) float64 s",
                "crop": "(n,) bool",
                "gain_db": "(n,) float32",
                "split": f"(n,) uint8 index into {list(SPLITS)}",
            },
            "split_rule": (
                f"per file key '<dir>/<relative path>': every file of the directories {list(config.heldout_dirs)} "
                f"is held out, every file of {list(config.train_dirs)} is trained on, and a sha256-chosen "
                f"{config.heldout_fraction:g} of the other directories' files are held out; held-out files "
                f"go to eval with probability {config.eval_fraction:g} (by hash), else valid; "
                "crops and gains on train files only"
            ),
            "audio_dirs": [],
            "files": {},
            "skipped": {},
            "shards": [],
            "next_file_id": 0,
            "software": {"torch": torch.__version__, "numpy": np.__version__},
        }
        write_json_atomic(cache / MANIFEST, m)
    report.removed_partial = clean_partial(cache, m)
    for d in audio_dirs:
        rec = {"name": Path(d).resolve().name, "path": str(Path(d).resolve())}
        if rec not in m["audio_dirs"]:
            m["audio_dirs"].append(rec)

    todo = [(k, dn, p) for k, dn, p in files if k not in m["files"]]
    report.already_done = len(files) - len(todo)
    writer = ShardWriter(cache, m, shard_size, report.new_shards)
    next_id = int(m["next_file_id"])
    bar = progress_bar(todo, progress, "files")
    for key, dir_name, path in bar:
        split = assign_split(key, dir_name, config)
        try:
            arrays, entry = _process_file(
                key,
                path,
                split,
                next_id,
                band,
                mel,
                teacher,
                config,
                batch_size=batch_size,
                device=device,
                n_threads=n_threads,
            )
        except _Skip as why:
            report.skipped[key] = str(why)
            m["skipped"][key] = {"path": str(path), "reason": str(why)}
            continue
        m["skipped"].pop(key, None)
        writer.add(key, entry, arrays)
        report.added.append(key)
        next_id += 1
    writer.flush()
    save_manifest(cache, m)  # records the skipped files even when no shard was written
    report.chunks_by_split = m["counts"]["chunks"]
    report.seconds = time.perf_counter() - t0
    return report


class _Skip(Exception):
    """A file that cannot go into the cache (the message says why)."""


def _process_file(
    key: str,
    path: Path,
    split: str,
    file_id: int,
    band: BandSpec,
    mel: MelSpec,
    teacher: Teacher,
    config: BuildConfig,
    *,
    batch_size: int,
    device: str,
    n_threads: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        audio, sr = read_audio(path)
    except Exception as exc:  # noqa: BLE001 - soundfile / libsndfile raise several types on corrupt data
        raise _Skip(
            f"unreadable audio ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not np.isfinite(audio).all():
        raise _Skip("the audio holds NaN or Inf samples")
    duration = audio.shape[0] / sr if sr else 0.0
    train = split == "train"
    # One rng per file from (seed, key): a resumed or partial build draws the same crops.
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{config.seed}\x1f{key}".encode()).digest()[:8], "big"))
    try:
        ch = file_chunks(
            audio,
            sr,
            band,
            mel,
            crops_per_chunk=config.crops_per_chunk if train else 0,
            gain_db=config.gain_db if train else None,
            rng=rng,
            peak_normalise=config.peak_normalise,
            n_threads=n_threads,
        )
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
        "levels": ch["levels"],
        "mel": ch["mel"],
        "probs": probs.astype(np.float32),
        "file_id": np.full(n, file_id, np.int32),
        "offset": ch["offset"],
        "crop": ch["crop"],
        "gain_db": ch["gain_db"],
        "split": np.full(n, SPLITS.index(split), np.uint8),
    }
    n_crops = int(ch["crop"].sum())
    entry = {
        "id": file_id,
        "path": str(path.resolve()),
        "split": split,
        "n_chunks": n - n_crops,
        "n_crops": n_crops,
        "duration_s": round(duration, 6),
        "sample_rate": sr,
        "peak": float(np.max(np.abs(audio))) if audio.size else 0.0,
    }
    return arrays, entry


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
    p.add_argument(
        "--teacher-source",
        metavar="FILE",
        help="teacher checkpoint (default ../shared/models/yamnet_int8_perchannel.tflite or "
        "mn04_as_mAP_432.pt); the label CSVs are read from the same folder",
    )
    p.add_argument(
        "--crops-per-chunk",
        type=int,
        default=0,
        help="random-offset crops per regular 1-s chunk, training files only (default 0)",
    )
    p.add_argument(
        "--gain-db",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="random gain range in dB for training chunks (default: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and gains (default 0)")
    p.add_argument(
        "--heldout-dir",
        action="append",
        metavar="NAME",
        help="directory name held out entirely (repeatable; default fold2)",
    )
    p.add_argument(
        "--train-dir",
        action="append",
        metavar="NAME",
        help="directory name used entirely for training (repeatable; default fold1)",
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.25,
        help="fraction of the other directories' files held out (default 0.25)",
    )
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=0.5,
        help="fraction of held-out files in 'eval' (the rest: 'valid'; default 0.5)",
    )
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
        teacher=args.teacher,
        crops_per_chunk=args.crops_per_chunk,
        gain_db=tuple(args.gain_db) if args.gain_db else None,
        seed=args.seed,
        heldout_dirs=tuple(args.heldout_dir) if args.heldout_dir else ("fold2",),
        train_dirs=tuple(args.train_dir) if args.train_dir else ("fold1",),
        heldout_fraction=args.heldout_fraction,
        eval_fraction=args.eval_fraction,
    )
    report = build_dataset(
        args.audio_dirs,
        args.output,
        teacher=teacher,
        config=config,
        shard_size=args.shard_size,
        max_files_per_dir=args.max_files_per_dir,
        batch_size=args.batch_size,
        device=args.device,
        n_threads=args.threads,
        progress=not args.no_progress,
    )
    print(report.summary())
    return 0
