"""The sensor-day archive benchmark (issue 5): `process` end to end with the YAMNet pipeline.

Builds a third-octave archive by looping the analysis of real audio from ../shared/data
(the 24 field recordings and a few UrbanSound8K clips, peak-normalised, then each repetition
with a gain offset of +-12 dB, 0.5 dB of noise, in shuffled order), written as Parquet
outside the repo, and classifies it with the package's shipped yamnet transcoder and YAMNet
converted from ../shared/models/yamnet_int8_perchannel.tflite (official front end), or with
--pipeline published: the paper's 64-channel YAMNet transcoder and the torch-port YAMNet. Reports, side by side in one
run: x real time, where the time goes, the RSS over time, 1 vs 2 threads and workers, a Dask
LocalCluster against a single process, and the int8 version of the transcoder (shipped as
<name>-int8) against the float one.

    nice -n 10 python benchmarks/bench_archive.py --out /work/runs/bench            # 10 min + scaling
    nice -n 10 python benchmarks/bench_archive.py --out /work/runs/bench --day      # + a full day
    python benchmarks/bench_archive.py --out /work/runs/bench --no-scaling --compare ctx.onnx  # CNN vs context

The models are converted once with `python -m training convert` (needs torch) into --out, or
given with --transcoder / --classifier.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ST_SHARED_DIR", REPO.parent / "shared"))
TRANSCODER_CKPT = (
    "classifier=YamNet+dataset=full+dilation=1+epoch=200+kernel_size=5+learning_rate=-3+nb_channels=64+"
    "nb_layers=5+prop_logit=100+step=train+transcoder=cnn_pinv+ts=1_model"
)
DAY_S = 24 * 3600.0


def convert_models(out: Path, pipeline: str) -> tuple[Path, Path]:
    """The (transcoder, classifier) files of a YAMNet pipeline, converted once into ``out``.

    ``shipped``: the package's own yamnet transcoder (16 channels) + YAMNet from the
    per-channel int8 tflite, official front end (its teacher). ``published``: the paper's
    YAMNet transcoder (64 channels) + YAMNet from yamnet_int8.tflite, torch-port front end.
    """
    m = SHARED / "models"
    labels = ["--yamnet-class-map", str(m / "yamnet_class_map.csv"), "--labels", str(m / "class_labels_indices.csv")]
    if pipeline == "shipped":
        tr = REPO / "python" / "spectral_transcoder" / "models_data" / "yamnet.onnx"
        clf = out / "yamnet.onnx"
        cmds = (
            []
            if clf.exists()
            else [["yamnet-tflite", str(m / "yamnet_int8_perchannel.tflite"), "-o", str(clf), *labels]]
        )
    else:
        tr, clf = out / "yamnet-cnn-logits.onnx", out / "yamnet-torchport.onnx"
        cmds = []
        if not tr.exists():
            cmds.append(["transcoder", str(SHARED / "reference" / "models" / TRANSCODER_CKPT), "-o", str(tr)])
        if not clf.exists():
            cmds.append(
                [
                    "yamnet-tflite",
                    str(m / "yamnet_int8.tflite"),
                    "-o",
                    str(clf),
                    "--input-spec",
                    "yamnet_torchport",
                    *labels,
                ]
            )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for c in cmds:
        subprocess.run([sys.executable, "-m", "training", "convert", *c], env=env, cwd=REPO, check=True)
    return tr, clf


def clip_paths(n_us8k: int) -> list[Path]:
    field = sorted((SHARED / "data" / "field-recordings").glob("*.flac"))
    us = sorted((SHARED / "data" / "urbansound8k-subset" / "fold1").glob("*.flac"))
    by_class: dict[str, list[Path]] = {}
    for p in us:
        by_class.setdefault(p.stem.split("-")[1], []).append(p)
    picked = [p for k in sorted(by_class) for p in by_class[k][: max(1, n_us8k // max(1, len(by_class)))]]
    return field + picked[:n_us8k]


def show(name: str, r: dict) -> None:
    from spectral_transcoder.cli_process import format_stages

    print(
        f"{name}: {r['x_real_time']:.1f}x real time ({r['audio_s']:.0f} s of audio in {r['wall_s']:.1f} s, "
        f"{r['blocks']} blocks, {r['rows']} rows), RSS peak {r['rss_peak_mb']:.0f} MB",
        flush=True,
    )
    print(f"  time: {format_stages(r['stages'])}", flush=True)
    print(f"  RSS: {r['rss_series']}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="working directory outside the repo (required)")
    ap.add_argument("--transcoder", default=None, help="transcoder .onnx (default: converted into --out)")
    ap.add_argument("--classifier", default=None, help="classifier .onnx (default: converted into --out)")
    ap.add_argument(
        "--pipeline",
        choices=("shipped", "published"),
        default="shipped",
        help="default models: the shipped yamnet transcoder + YAMNet (official front end), or the "
        "published 64-channel transcoder + YAMNet (torch-port front end)",
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the short archive (scaling runs)")
    ap.add_argument("--us8k", type=int, default=20, help="UrbanSound8K clips added to the 24 field recordings")
    ap.add_argument("--day", action="store_true", help="also process a whole sensor-day (691 200 frames)")
    ap.add_argument(
        "--day-transcoder",
        default=None,
        help="transcoder for the day run (default: --transcoder; 'pinv:yamnet_torchport' = no CNN)",
    )
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1-vs-2-worker and Dask runs")
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="ONNX",
        help="another transcoder (e.g. a context transcoder from `training export-fit`) run on the "
        "same archive right after the baseline, reported as a ratio to it; repeatable",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one run, JSON out
    args = ap.parse_args()
    if args.one:
        from spectral_transcoder.cli_process import run_bench

        spec = json.loads(args.one)
        r = run_bench(spec.pop("archive"), spec.pop("output"), **spec)
        r.pop("rss_samples")
        print(json.dumps(r, default=str))
        return 0

    from spectral_transcoder.cli_process import audio_levels, make_level_archive

    if args.out is None:
        ap.error("--out DIR is required (a working directory outside the repo)")

    args.out.mkdir(parents=True, exist_ok=True)
    tr, clf = (
        (Path(args.transcoder), Path(args.classifier))
        if args.transcoder and args.classifier
        else convert_models(args.out, args.pipeline)
    )
    t0 = time.perf_counter()
    paths = clip_paths(args.us8k)
    if not paths:
        ap.error(f"no recordings under {SHARED}/data (set ST_SHARED_DIR)")
    clips = audio_levels(paths)
    src_s = sum(len(c) for c in clips) * 0.125
    print(
        f"material: {len(clips)} recordings ({src_s:.0f} s), analysed in {time.perf_counter() - t0:.1f} s", flush=True
    )
    short = make_level_archive(args.out / f"archive-{args.minutes:g}min.parquet", clips, seconds=args.minutes * 60)
    results: dict[str, dict] = {}

    def run(name: str, archive: Path, **kw: object) -> dict:
        # each run in a fresh process: its RSS is its own, not what earlier runs left loaded
        spec = {
            "archive": str(archive),
            "output": str(args.out / ("out-" + "".join(c if c.isalnum() else "_" for c in name))),
            "classifier": str(clf),
            **kw,
        }
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(spec)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        show(name, r)
        results[name] = r
        return r

    int8 = tr.with_name(tr.stem + "-int8.onnx")  # the shipped transcoders have int8 versions
    int8 = int8 if int8.is_file() else None
    base = run("single process, 2 threads (2 blocks at once)", short, transcoder=str(tr), n_threads=2)
    for other in args.compare:
        r = run(f"single process, 2 threads, transcoder {Path(other).stem}", short, transcoder=other, n_threads=2)
        print(
            f"  ratio to the baseline transcoder {tr.stem}: {r['x_real_time'] / base['x_real_time']:.2f}x "
            f"(RSS peak {r['rss_peak_mb']:.0f} vs {base['rss_peak_mb']:.0f} MB)",
            flush=True,
        )
    if not args.no_scaling:
        run("single process, 1 thread", short, transcoder=str(tr), n_threads=1)
        run("dask LocalCluster, 1 worker x 2 threads", short, transcoder=str(tr), workers=1, n_threads=2)
        run("dask LocalCluster, 2 workers x 1 thread", short, transcoder=str(tr), workers=2, n_threads=1)
        run(
            "single process, 2 threads, one ORT run per 60-s block",
            short,
            transcoder=str(tr),
            n_threads=2,
            batch_size=None,
        )
        if int8 is not None:
            run("single process, 2 threads, int8 CNN", short, transcoder=str(int8), n_threads=2)
        from spectral_transcoder.models import Transcoder

        pinv_target = Transcoder.from_file(tr).output_spec.name
        run("PINV only (no CNN), single process", short, transcoder=f"pinv:{pinv_target}", n_threads=2)
        one, two = results["single process, 1 thread"], results["dask LocalCluster, 2 workers x 1 thread"]
        print(
            f"scaling 1 -> 2: threads of one process (blocks at once) {base['x_real_time'] / one['x_real_time']:.2f}x, "
            f"Dask worker processes {two['x_real_time'] / one['x_real_time']:.2f}x; "
            f"dask 2x1 / single process with 2 threads: {two['x_real_time'] / base['x_real_time']:.2f}",
            flush=True,
        )
    if args.day:
        t0 = time.perf_counter()
        day = make_level_archive(args.out / "archive-day.parquet", clips, seconds=DAY_S, seed=1)
        print(
            f"day archive: {day} ({day.stat().st_size / 2**20:.0f} MB, written in {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        run("sensor-day, single process", day, transcoder=args.day_transcoder or str(tr), n_threads=2, progress=True)
        if int8 is not None and args.day_transcoder is None:
            run("sensor-day, single process, int8 CNN", day, transcoder=str(int8), n_threads=2, progress=True)
    full = {k: r for k, r in results.items() if not k.startswith("PINV only")}
    best = max(full, key=lambda k: full[k]["x_real_time"])
    print(
        f"goal: >= 800x real time (YAMNet), RSS <= 1 GB; best full pipeline: {full[best]['x_real_time']:.1f}x "
        f"({best}, RSS peak {full[best]['rss_peak_mb']:.0f} MB)",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
