"""Re-analysis errors of `st.griffin_lim` (docs/griffin-lim.md): Mel -> audio -> the same Mel front end.

For each reference clip of ../shared/reference/audio (mono, the first --seconds) and each Mel spec of
a shipped classifier, the true Mel (`st.mel`) and, where a transcoder exists, a transcoded Mel
(PINV alone, and the shipped CNN transcoders) are turned into audio with `st.griffin_lim` and
re-analysed with `st.mel`. Prints one Markdown row per case: the mean and 95th percentile of the
absolute log-Mel error in dB of Mel power (`inverse.db_per_unit`), and the Mel spectral convergence
||m_out - m_in|| / ||m_in|| on the linear Mel values, for 0 iterations (random phase) and --iterations.

    nice -n 5 python benchmarks/griffin_lim_errors.py [--seconds 10] [--iterations 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import spectral_transcoder as st
from spectral_transcoder.inverse import _undo_log, db_per_unit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "audio"
SPECS = ["pann", "yamnet_torchport", "yamnet", "efficientat"]
TRANSCODED = {
    "pann": ["pinv:pann"],
    "yamnet": ["pinv:yamnet", "yamnet"],
    "efficientat": ["pinv:efficientat", "efficientat-mn04"],
}


def errors(m_in: np.ndarray, audio: np.ndarray, spec: st.MelSpec) -> tuple[float, float, float]:
    m_out = st.mel(audio, spec.sample_rate, spec)[: m_in.shape[0]]
    d = np.abs(m_out - m_in) * db_per_unit(spec)
    a, b = _undo_log(m_in, spec), _undo_log(m_out, spec)
    return float(d.mean()), float(np.percentile(d, 95)), float(np.linalg.norm(b - a) / np.linalg.norm(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--iterations", type=int, default=64)
    ap.add_argument("--audio", type=Path, default=SHARED)
    args = ap.parse_args()
    print(
        f"| clip | spec | Mel | frames | 0 it: mean dB | 0 it: SC | {args.iterations} it: mean dB | p95 dB | SC | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for wav in sorted(args.audio.glob("*.wav")):
        x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        x = x.mean(axis=1)[: int(args.seconds * sr)]
        levels = st.third_octave(x, sr)
        levels = levels[: levels.shape[0] // 8 * 8]
        for name in SPECS:
            spec = st.get_mel_spec(name)
            cases = [("true", st.mel(x, sr, spec))]
            for tr in TRANSCODED.get(name, []):
                cases.append((tr, st.Transcoder.coerce(tr)(levels)))
            for label, m in cases:
                e0 = errors(m, st.griffin_lim(m, spec=spec, n_iter=0), spec)
                t = time.perf_counter()
                out = st.griffin_lim(m, spec=spec, n_iter=args.iterations)
                dt = time.perf_counter() - t
                e = errors(m, out, spec)
                print(
                    f"| {wav.stem[:12]} | {name} | {label} | {m.shape[0]} | {e0[0]:.2f} | {e0[2]:.3f} | "
                    f"{e[0]:.2f} | {e[1]:.2f} | {e[2]:.3f} | {dt:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
