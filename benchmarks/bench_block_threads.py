"""How to spend 2 cores on the models: threads inside ONNX Runtime, or blocks in parallel?

`process()` runs one block per thread, each through one-threaded ONNX Runtime sessions. This
benchmark is the evidence for that choice: it times the transcoder CNN + classifier on the
same 1-s chunks (third-octave analysis of real recordings from ../shared/data, through the
PINV) three ways, side by side in one process, and reports chunks per second (= x real time
for the models alone) and the ratios:

* one stream, sessions with 1 intra-op thread;
* one stream, sessions with N intra-op threads (what process() did before);
* N Python threads, each running its own stream through shared 1-thread sessions.

    python benchmarks/bench_block_threads.py --classifier /path/yamnet.onnx [--transcoder yamnet]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ST_SHARED_DIR", REPO.parent / "shared"))


def chunks_from_audio(n_files: int) -> np.ndarray:
    """1-s cense_fast chunks (n, 8, 29) dBFS from the first field recordings."""
    import warnings

    from spectral_transcoder.cli_process import audio_levels
    from spectral_transcoder.pinv import PartialChunkWarning, split_chunks

    paths = sorted((SHARED / "data" / "field-recordings").glob("*.flac"))[:n_files]
    if not paths:
        raise SystemExit(f"no recordings under {SHARED}/data/field-recordings (set ST_SHARED_DIR)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialChunkWarning)  # the last frames of less than a chunk: not needed
        return split_chunks(np.concatenate(audio_levels(paths)), "cense_fast", partial="drop")[0]


def stream(tr, clf, mels: np.ndarray, batch: int, start: int, stop: int) -> None:
    for i in range(start, stop, batch):
        clf(tr.run_cnn(mels[i : min(i + batch, stop)]))


def chunks_per_second(tr, clf, mels: np.ndarray, batch: int, n_streams: int, rounds: int) -> float:
    """Best of ``rounds``: all chunks split among ``n_streams`` threads."""
    stream(tr, clf, mels, batch, 0, 2 * batch)  # warm-up
    bounds = np.linspace(0, len(mels), n_streams + 1).astype(int) // batch * batch
    bounds[-1] = len(mels)
    best = float("inf")
    for _ in range(rounds):
        threads = [
            threading.Thread(target=stream, args=(tr, clf, mels, batch, bounds[i], bounds[i + 1]))
            for i in range(n_streams)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return len(mels) / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", required=True, help="classifier name or .onnx")
    ap.add_argument("--transcoder", default="yamnet", help="transcoder name or .onnx (default: yamnet)")
    ap.add_argument("--threads", type=int, default=2, help="N (default 2: this machine's cores)")
    ap.add_argument("--batch", type=int, default=8, help="chunks per ONNX Runtime run (process()'s default)")
    ap.add_argument("--files", type=int, default=24, help="field recordings to analyse")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from spectral_transcoder import Classifier, Transcoder

    chunks = chunks_from_audio(args.files)
    n = args.threads

    def models(intra: int):
        return (
            Transcoder.coerce(args.transcoder, n_threads=intra, batch_size=args.batch),
            Classifier.coerce(args.classifier, n_threads=intra, batch_size=args.batch),
        )

    tr1, clf1 = models(1)
    trn, clfn = models(n)
    mels = tr1.pinv_chunks(chunks)
    print(f"{len(mels)} chunks of 1 s, batches of {args.batch}; {tr1.model_id} -> {clf1.model_id}", flush=True)
    one = chunks_per_second(tr1, clf1, mels, args.batch, 1, args.rounds)
    intra = chunks_per_second(trn, clfn, mels, args.batch, 1, args.rounds)
    blocks = chunks_per_second(tr1, clf1, mels, args.batch, n, args.rounds)
    print(f"one stream, 1-thread sessions:      {one:7.0f} chunks/s", flush=True)
    print(f"one stream, {n}-thread sessions:      {intra:7.0f} chunks/s  ({intra / one:.2f}x)", flush=True)
    print(
        f"{n} streams, shared 1-thread sessions: {blocks:7.0f} chunks/s  ({blocks / one:.2f}x; "
        f"{blocks / intra:.2f}x the {n}-thread sessions)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
