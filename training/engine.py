"""The data engine: synthesised training scenes and a multi-domain held-out set, cached once.

``python -m training engine build --index INDEX.json -o ENGINE_DIR --scenes 50000``

Training examples are *scenes* (:mod:`training.augment`): ``context + seconds + context``
seconds mixed from the index's ``train`` groups. Per scene the cache holds, computed once:

=========================== ======================= ==============================================
``levels.npy``              (S, F, 29) float16      ``cense_fast`` levels of the whole scene, dBFS,
                                                    F = 8 x (seconds + 2 context) frames
``mel_<teacher>.npy``       (S, seconds, T, M) f16  ground-truth Mel of each target second
``logits_<teacher>.npy``    (S, seconds, C) f16     the frozen teacher's logits on it
``scenes.json``                                     what was drawn (sources, SNRs, level, ...)
=========================== ======================= ==============================================

Each target second is one training example: 50 000 scenes of 4 s give 200 000 distinct
1-s examples. Shards of ``shard_scenes`` scenes are built by worker processes, written
to a temporary folder and renamed when whole; a rerun skips finished shards and redraws
nothing (scene ``i`` of shard ``s`` is seeded from ``(seed, s, i)``), so more shards can
be added later with a larger ``--scenes``.

The held-out set (``heldout/valid`` and ``heldout/test``) holds the regular 1-s chunks of
the index's held-out groups (split by source recording: :func:`training.sources.record_split`),
per domain, in clips of at most 10 s, at a sensor-like level drawn per clip. Each chunk
carries its neighbours' levels where the file has them (``levels`` (N, 8 (1 + 2 context),
29); a missing neighbour repeats the chunk itself, as inference does at a stream's ends).
:mod:`training.engine_store` reads both back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectral_transcoder import frontends
from spectral_transcoder._validation import resample
from spectral_transcoder.analysis import third_octave
from spectral_transcoder.pinv import context_windows
from spectral_transcoder.specs import get_band_spec

from .augment import SCENE_RATE, SceneConfig, SourcePool, synthesize_scene
from .runs import write_json_atomic
from .sources import SourceRecord, load_index, record_split

__all__ = [
    "ENGINE_FORMAT",
    "HeldoutConfig",
    "build_scenes",
    "build_heldout",
    "add_parser",
]

ENGINE_FORMAT = "spectral_transcoder.training.engine/1"
BAND = "cense_fast"
TEACHER_SPECS = {"yamnet": "yamnet", "efficientat": "efficientat"}


@dataclass(frozen=True)
class HeldoutConfig:
    """How held-out data is chosen and cut (fixed for an engine folder)."""

    heldout_fraction: float = 0.2
    valid_fraction: float = 0.08
    clip_seconds: int = 10
    max_clips_per_group: int = 3
    max_clips_per_domain: int = 400
    level_db: tuple[float, float] = (-30.0, 0.0)
    salt: str = ""


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


# ---------------------------------------------------------------------- targets
_TEACHERS: dict[str, Any] = {}


def _teacher(name: str, models_dir: str | None) -> Any:
    if name not in _TEACHERS:
        from .teachers import load_teacher

        _TEACHERS[name] = load_teacher(name, models_dir=models_dir)
    return _TEACHERS[name]


def _targets(audio32: np.ndarray, teacher: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth Mels (n, T, M) and teacher logits (n, C) of 1-s chunks (n, 32000) at 32 kHz."""
    from .chunks import first_patch

    spec = teacher.mel_spec
    x = audio32 if spec.sample_rate == SCENE_RATE else resample(audio32, SCENE_RATE, spec.sample_rate)
    mel = first_patch(frontends.mel(np.ascontiguousarray(x, np.float32), spec.sample_rate, spec, n_threads=1), spec)
    return mel.astype(np.float16), teacher.logits(mel, batch_size=128).astype(np.float16)


def _levels(audio32: np.ndarray) -> np.ndarray:
    """Continuous cense_fast levels (..., frames, 29) of audio (..., n) at 32 kHz."""
    return third_octave(np.ascontiguousarray(audio32, np.float32), SCENE_RATE, get_band_spec(BAND), n_threads=1)


# ---------------------------------------------------------------------- scenes
def _build_shard(args: tuple[str, int, dict[str, Any]]) -> str:
    out_dir, shard, job = args
    import torch

    torch.set_num_threads(1)
    band = get_band_spec(BAND)
    scene = SceneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["scene"].items()})
    pool = SourcePool(job["pool_paths"], {k: np.asarray(v) for k, v in job["pool_durations"].items()})
    fpc = band.frames_per_chunk
    n_frames = fpc * scene.total_seconds
    extra = band.frame_length - band.hop_length  # the last frame is whole
    audio, infos = [], []
    for i in range(job["shard_scenes"]):
        rng = np.random.default_rng(_seed(job["seed"], shard, i))
        x, info = synthesize_scene(pool, scene, rng, extra_samples=extra)
        audio.append(x)
        infos.append(info)
    a = np.stack(audio)
    arrays = {"levels": _levels(a)[:, :n_frames].astype(np.float16)}
    c0 = scene.context * SCENE_RATE
    centre = a[:, c0 : c0 + scene.seconds * SCENE_RATE].reshape(-1, SCENE_RATE)
    for name in job["teachers"]:
        mel, logits = _targets(centre, _teacher(name, job["models_dir"]))
        arrays[f"mel_{name}"] = mel.reshape(a.shape[0], scene.seconds, *mel.shape[1:])
        arrays[f"logits_{name}"] = logits.reshape(a.shape[0], scene.seconds, -1)
    final = Path(out_dir) / f"shard-{shard:05d}"
    tmp = Path(out_dir) / f".tmp-shard-{shard:05d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, v in arrays.items():
        np.save(tmp / f"{k}.npy", v)
    (tmp / "scenes.json").write_text(json.dumps(infos), encoding="utf-8")
    os.replace(tmp, final)
    return final.name


def _split_records(records: Sequence[SourceRecord], cfg: HeldoutConfig) -> dict[str, list[SourceRecord]]:
    out: dict[str, list[SourceRecord]] = {"train": [], "valid": [], "test": []}
    for r in records:
        out[
            record_split(r, heldout_fraction=cfg.heldout_fraction, valid_fraction=cfg.valid_fraction, salt=cfg.salt)
        ].append(r)
    return out


def _engine_json(
    out: Path,
    index: str,
    teachers: Sequence[str],
    scene: SceneConfig,
    held: HeldoutConfig,
    seed: int,
    shard_scenes: int,
    models_dir: str | None,
) -> dict[str, Any]:
    fp = {
        "format": ENGINE_FORMAT,
        "band_spec": BAND,
        "teachers": list(teachers),
        "scene": scene.to_dict(),
        "heldout": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(held).items()},
        "seed": seed,
        "shard_scenes": shard_scenes,
    }
    path = out / "engine.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in fp if old.get(k) != fp[k]]
        if diff:
            raise ValueError(f"{out} was built with other settings ({', '.join(diff)} differ); use a new folder")
        return old
    out.mkdir(parents=True, exist_ok=True)
    info = dict(fp, index=os.path.basename(index), teacher_sha256={t: _teacher(t, models_dir).sha256 for t in teachers})
    write_json_atomic(path, info)
    return info


def build_scenes(
    index: str,
    out: str | os.PathLike,
    *,
    n_scenes: int,
    teachers: Sequence[str] = ("yamnet", "efficientat"),
    scene: SceneConfig = SceneConfig(),
    heldout: HeldoutConfig = HeldoutConfig(),
    seed: int = 0,
    shard_scenes: int = 250,
    workers: int = 2,
    models_dir: str | None = None,
    log: Any = print,
) -> int:
    """Build (or extend, or resume) the training scenes; returns the number of shards present."""
    out_p = Path(out)
    _engine_json(out_p, index, teachers, scene, heldout, seed, shard_scenes, models_dir)
    train = _split_records(load_index(index), heldout)["train"]
    pool = SourcePool.from_records(train)
    job = {
        "scene": scene.to_dict(),
        "pool_paths": pool.paths,
        "pool_durations": {k: v.tolist() for k, v in pool.durations.items()},
        "teachers": list(teachers),
        "seed": seed,
        "shard_scenes": shard_scenes,
        "models_dir": models_dir,
    }
    shard_dir = out_p / "train"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for junk in shard_dir.glob(".tmp-*"):
        shutil.rmtree(junk, ignore_errors=True)
    n_shards = -(-n_scenes // shard_scenes)
    todo = [s for s in range(n_shards) if not (shard_dir / f"shard-{s:05d}").is_dir()]
    log(f"{len(train)} training files in {len(pool.paths)} domains; {n_shards - len(todo)} of {n_shards} shards done")
    t0 = time.perf_counter()
    args = [(str(shard_dir), s, job) for s in todo]
    if workers <= 1:
        results = map(_build_shard, args)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        pool_p = ctx.Pool(workers)
        results = pool_p.imap_unordered(_build_shard, args)
    for k, name in enumerate(results, 1):
        dt = time.perf_counter() - t0
        log(f"{name} done ({k}/{len(todo)}, {k * shard_scenes * scene.seconds / dt:.0f} examples/s)")
    if workers > 1:
        pool_p.close()
        pool_p.join()
    return sum(1 for _ in shard_dir.glob("shard-*"))


# ---------------------------------------------------------------------- held out
def build_heldout(
    index: str,
    out: str | os.PathLike,
    *,
    teachers: Sequence[str] = ("yamnet", "efficientat"),
    heldout: HeldoutConfig = HeldoutConfig(),
    context: int = 1,
    models_dir: str | None = None,
    log: Any = print,
) -> dict[str, int]:
    """Build ``heldout/valid`` and ``heldout/test``; returns chunks per split."""
    import soundfile as sf

    band = get_band_spec(BAND)
    fpc = band.frames_per_chunk
    counts = {}
    for split, recs in _split_records(load_index(index), heldout).items():
        if split == "train":
            continue
        dest = Path(out) / "heldout" / split
        if (dest / "meta.json").is_file():
            counts[split] = json.loads((dest / "meta.json").read_text())["n_chunks"]
            continue
        by_domain: dict[str, list[SourceRecord]] = {}
        for r in sorted(recs, key=lambda r: _seed(heldout.salt, r.path)):
            by_domain.setdefault(r.domain, []).append(r)
        cols: dict[str, list[np.ndarray]] = {"levels": [], "clip": [], "domain": [], "group": []}
        clips_meta, domains, groups = [], sorted(by_domain), []
        centre_audio = []
        for d in domains:
            n_dom, per_group = 0, {}
            for r in by_domain[d]:
                if n_dom >= heldout.max_clips_per_domain:
                    break
                if per_group.get(r.group, 0) >= heldout.max_clips_per_group:
                    continue
                # Enough for the clips a group may give (plus margin): long files are not read whole.
                head_s = heldout.clip_seconds * heldout.max_clips_per_group + 5
                x, sr = sf.read(r.path, dtype="float32", always_2d=True, frames=int(r.sample_rate * head_s))
                x = resample(x.mean(axis=1), float(sr), SCENE_RATE)
                for c0 in range(0, x.shape[0] // SCENE_RATE, heldout.clip_seconds):
                    seg = x[c0 * SCENE_RATE : (c0 + heldout.clip_seconds) * SCENE_RATE]
                    n = seg.shape[0] // SCENE_RATE
                    peak = float(np.max(np.abs(seg))) if seg.size else 0.0
                    if n == 0 or peak == 0 or per_group.get(r.group, 0) >= heldout.max_clips_per_group:
                        break
                    u = _seed(heldout.salt, r.path, c0) / 2.0**64
                    seg = seg * (
                        10 ** ((heldout.level_db[0] + u * (heldout.level_db[1] - heldout.level_db[0])) / 20) / peak
                    )
                    pad = np.zeros(n * SCENE_RATE + band.frame_length - band.hop_length, np.float32)
                    pad[: min(pad.size, seg.size)] = seg[: pad.size]
                    lv = _levels(pad)[: n * fpc]
                    cid = len(clips_meta)
                    cols["levels"].append(context_windows(lv.reshape(n, fpc, -1), context).astype(np.float16))
                    cols["clip"].append(np.full(n, cid, np.int32))
                    cols["domain"].append(np.full(n, domains.index(d), np.int16))
                    if r.group not in groups:
                        groups.append(r.group)
                    cols["group"].append(np.full(n, groups.index(r.group), np.int32))
                    centre_audio.append(pad[: n * SCENE_RATE].reshape(n, SCENE_RATE))
                    clips_meta.append(
                        {
                            "path": r.path,
                            "offset_s": c0,
                            "seconds": n,
                            "domain": d,
                            "group": r.group,
                            "source": r.source,
                            "licence": r.licence,
                        }
                    )
                    per_group[r.group] = per_group.get(r.group, 0) + 1
                    n_dom += 1
        if not clips_meta:
            counts[split] = 0
            log(f"held-out {split}: no clips (no held-out group in the index)")
            continue
        arrays = {k: np.concatenate(v) for k, v in cols.items()}
        audio = np.concatenate(centre_audio)
        for t in teachers:
            arrays[f"mel_{t}"], arrays[f"logits_{t}"] = _targets(audio, _teacher(t, models_dir))
        tmp = dest.with_name(f".tmp-{split}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v)
        meta = {
            "n_chunks": int(audio.shape[0]),
            "n_clips": len(clips_meta),
            "domains": domains,
            "groups": groups,
            "clips": clips_meta,
            "context": context,
        }
        write_json_atomic(tmp / "meta.json", meta)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        counts[split] = meta["n_chunks"]
        log(
            f"held-out {split}: {meta['n_chunks']} chunks, {len(clips_meta)} clips, "
            + ", ".join(f"{d} {sum(1 for c in clips_meta if c['domain'] == d)}" for d in domains)
        )
    return counts


# ---------------------------------------------------------------------- CLI
def add_parser(sub: Any) -> None:
    """Register ``engine`` (``engine build``) on an argparse subparsers object."""
    p = sub.add_parser(
        "engine",
        help="build the data engine: synthesised training scenes and the held-out set",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    s = p.add_subparsers(dest="engine_command", metavar="ACTION")
    s.required = True
    b = s.add_parser("build", help="build, extend or resume an engine folder (rerun the same command to resume)")
    b.add_argument("--index", required=True, help="audio sources index (python -m training sources index)")
    b.add_argument("-o", "--out", required=True, help="engine folder")
    b.add_argument("--scenes", type=int, default=50000, help="training scenes (each gives 4 examples)")
    b.add_argument("--teachers", nargs="+", default=["yamnet", "efficientat"], choices=sorted(TEACHER_SPECS))
    b.add_argument("--models-dir", default=None, help="teacher checkpoints (default ../shared/models)")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--shard-scenes", type=int, default=250)
    b.add_argument("--heldout-only", action="store_true", help="build only the held-out set")
    b.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    log = lambda m: print(m, flush=True)  # noqa: E731
    kw = dict(teachers=args.teachers, models_dir=args.models_dir, log=log)
    if not args.heldout_only:
        build_scenes(
            args.index,
            args.out,
            n_scenes=args.scenes,
            seed=args.seed,
            shard_scenes=args.shard_scenes,
            workers=args.workers,
            **kw,
        )
    build_heldout(args.index, args.out, **kw)
    return 0
