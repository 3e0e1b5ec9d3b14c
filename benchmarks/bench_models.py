"""ONNX Runtime vs PyTorch on the project's networks, side by side in one run.

    python benchmarks/bench_models.py [--only cnn,yamnet,efficientat,resnet38] [--threads 1,2]
                                      [--min-time 1.0] [--quant] [--quick]

Unit: seconds of audio processed per wall-clock second (x real time), and the
ORT/torch ratio of those speeds, for each batch size and intra-op thread count:

* CNN transcoder: one 1-s chunk = (101, 64) PINV Mel (PANN target); batches 1 and 64.
* YAMNet: one (96, 64) patch counted as 1 s of audio (the transcoder pipeline feeds one
  patch per 1-s chunk; with the official 0.48-s patch hop halve the figure).
* EfficientAT mn04: 1-s (100 frames) and 10-s (1000 frames) inputs.
* PANN ResNet38 (random weights; the real ones are not in the project): 1-s chunks (101 frames).

Weights come from ../shared when present (published PANN CNN-logits transcoder,
yamnet_int8.tflite, mn04_as_mAP_432.pt), random otherwise; speed does not depend on them.
ORT sessions use ORT_ENABLE_ALL, sequential execution, inter-op threads 1, intra-op
threads as swept; torch uses ``torch.set_num_threads`` and ``inference_mode``.

``--quant`` adds, for the CNN and YAMNet: int8 static QDQ quantisation (ONNX Runtime's
quantize_static, per-channel weights; calibrated on real recordings of
../shared/data/field-recordings through the project's own front ends, evaluated on the
goldens' chunks) and bf16 (PyTorch CPU autocast: ONNX Runtime's CPU provider has no
bf16 kernels on x86), with speed and output error against fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "python"), str(REPO)]
SHARED = Path(os.environ.get("ST_SHARED_DIR", REPO.parent / "shared"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from spectral_transcoder.metadata import ModelMetadata  # noqa: E402
from spectral_transcoder.specs import get_band_spec, get_mel_spec  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.nets import CNNTranscoder, EfficientATMN, ResNet38, YAMNet  # noqa: E402

CNN_CKPT = (
    SHARED
    / "reference/models"
    / (
        "classifier=PANN+dataset=full+dilation=1+epoch=200+kernel_size=5+learning_rate=-3"
        "+nb_channels=64+nb_layers=5+prop_logit=100+step=train+transcoder=cnn_pinv+ts=1_model"
    )
)


def best_time(fn: Callable[[], object], min_time: float, min_repeats: int = 3) -> float:
    """Best wall time of one call, repeating for at least ``min_time`` seconds (after one warm-up)."""
    fn()
    best, total, n = float("inf"), 0.0, 0
    while n < min_repeats or total < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _meta(kind: str, name: str, spec: str) -> ModelMetadata:
    if kind == "transcoder":
        return ModelMetadata(
            kind="transcoder",
            name=name,
            input_spec=get_band_spec("cense_fast"),
            output_spec=get_mel_spec(spec),
            source="bench",
            source_sha256="0" * 64,
            license="-",
        )
    return ModelMetadata(
        kind="classifier",
        name=name,
        input_spec=get_mel_spec(spec),
        output_spec=None,
        source="bench",
        source_sha256="0" * 64,
        license="-",
    )


def load_models(only: set[str], tmp: Path) -> dict[str, dict]:
    """name -> {module, onnx path, frames, n_mels, seconds per item, batches, weights}."""
    models: dict[str, dict] = {}
    if "cnn" in only:
        m = CNNTranscoder()
        src = "random"
        if CNN_CKPT.exists():
            m.load_state_dict(torch.load(CNN_CKPT, weights_only=True))
            src = "published PANN CNN-logits"
        models["cnn"] = dict(
            module=m,
            kind="transcoder",
            spec="pann",
            inputs=[(101, 1.0)],
            batches=[1, 64],
            weights=src,
            dyn=True,
            min_frames=1,
        )
    if "yamnet" in only:
        m = YAMNet()
        src = "random"
        if (SHARED / "models/yamnet_int8.tflite").exists():
            from training.yamnet_weights import read_tflite

            m.load_state_dict(read_tflite(SHARED / "models/yamnet_int8.tflite")[0])
            src = "yamnet_int8.tflite"
        models["yamnet"] = dict(
            module=m,
            kind="classifier",
            spec="yamnet",
            inputs=[(96, 1.0)],
            batches=[1, 16, 64],
            weights=src,
            dyn=False,
            min_frames=96,
        )
    if "efficientat" in only:
        m = EfficientATMN()
        src = "random"
        if (SHARED / "models/mn04_as_mAP_432.pt").exists():
            m.load_state_dict(torch.load(SHARED / "models/mn04_as_mAP_432.pt", weights_only=True))
            src = "mn04_as_mAP_432.pt"
        models["efficientat"] = dict(
            module=m,
            kind="classifier",
            spec="efficientat",
            inputs=[(100, 1.0), (1000, 10.0)],
            batches=[1, 16],
            weights=src,
            dyn=True,
            min_frames=1,
        )
    if "resnet38" in only:
        models["resnet38"] = dict(
            module=ResNet38(),
            kind="classifier",
            spec="pann",
            inputs=[(101, 1.0)],
            batches=[1, 8],
            weights="random",
            dyn=True,
            min_frames=32,
        )
    for name, d in models.items():
        d["module"].eval()
        n_mels = get_mel_spec(d["spec"]).n_mels
        d["n_mels"] = n_mels
        frames = d["inputs"][0][0]
        d["onnx"] = export_onnx(
            d["module"],
            _meta(d["kind"], name, d["spec"]),
            tmp / f"{name}.onnx",
            example=torch.randn(2, frames, n_mels),
            dynamic_frames=d["dyn"],
            min_frames=d["min_frames"],
        )
    return models


def bench(models: dict[str, dict], threads: list[int], min_time: float) -> None:
    print(f"\n{'model':<12} {'input':>12} {'batch':>5} {'thr':>3} {'torch x RT':>12} {'ORT x RT':>12} {'ORT/torch':>9}")
    for name, d in models.items():
        for frames, seconds in d["inputs"]:
            for batch in d["batches"]:
                x = np.random.default_rng(0).standard_normal((batch, frames, d["n_mels"])).astype(np.float32)
                xt = torch.from_numpy(x)
                audio = batch * seconds
                for th in threads:
                    torch.set_num_threads(th)
                    sess = ort_session(d["onnx"], th)

                    def run_torch() -> None:
                        with torch.inference_mode():
                            d["module"](xt)

                    t_torch = best_time(run_torch, min_time)
                    t_ort = best_time(lambda: sess.run(None, {"mel": x}), min_time)
                    print(
                        f"{name:<12} {frames:>5}x{d['n_mels']:<3} s {batch:>5} {th:>3} {audio / t_torch:>12.0f} "
                        f"{audio / t_ort:>12.0f} {t_torch / t_ort:>9.2f}",
                        flush=True,
                    )


# ----------------------------------------------------------------- quantisation
def _golden_inputs(name: str) -> np.ndarray | None:
    """Evaluation inputs: the goldens' real chunks (PINV Mels for the CNN, official patches for YAMNet)."""
    g = SHARED / "reference/golden"
    if name == "cnn" and (g / "birds.npz").exists():
        return np.concatenate(
            [np.load(g / f)["mel_pann_pinv_chunks"] for f in ("birds.npz", "street_pedestrian-paris-152-4607-a.npz")]
        ).astype(np.float32)
    if name == "yamnet" and (g / "yamnet_int8_dequant.npz").exists():
        return np.load(g / "yamnet_int8_dequant.npz")["patches"].astype(np.float32)
    return None


def _calibration(name: str, frames: int, n_mels: int, n_files: int = 6) -> tuple[np.ndarray, str]:
    """Calibration inputs from real recordings (../shared/data/field-recordings, 10 s each) through the
    project's own front ends; not the evaluation clips. Falls back to the goldens, then to noise."""
    import glob

    files = sorted(glob.glob(str(SHARED / "data/field-recordings/*.flac")))[:n_files]
    if files:
        try:
            import soundfile as sf

            from spectral_transcoder.analysis import third_octave
            from spectral_transcoder.frontends import mel, patches
            from spectral_transcoder.pinv import pinv

            out = []
            for f in files:
                a, sr = sf.read(f, dtype="float32", always_2d=True)
                a = a.mean(axis=1)[: int(sr * 10)]
                a = a / max(float(np.abs(a).max()), 1e-9)  # peak-normalised, as the training data
                if name == "cnn":
                    lv = third_octave(a, sr)
                    out.append(pinv(lv[: lv.shape[0] // 8 * 8], "pann", layout="chunks"))
                else:
                    out.append(patches(mel(a, sr, "yamnet"), "yamnet"))
            return np.concatenate(out).astype(np.float32), f"{len(files)} field recordings"
        except Exception as exc:  # noqa: BLE001 - the kernels may be missing or mid-rebuild: fall back
            print(f"  ({name}: calibration from recordings failed: {type(exc).__name__}: {exc})")
    g = _golden_inputs(name)
    if g is not None:
        return g, "the golden clips (in-sample)"
    return np.random.default_rng(1).standard_normal((16, frames, n_mels)).astype(np.float32), "noise"


def bench_quant(models: dict[str, dict], threads: list[int], min_time: float, tmp: Path) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, data: np.ndarray) -> None:
            self.items = iter([{"mel": data[i : i + 1]} for i in range(len(data))])

        def get_next(self):
            return next(self.items, None)

    print(
        "\nint8 static QDQ (ONNX Runtime, per-channel weights, uint8 activations, MinMax calibration) and bf16 "
        "(torch CPU autocast) vs fp32 ORT, batch 64.\nErrors on the goldens' real chunks: dB for the CNN "
        "(PANN CNN-logits), probabilities for YAMNet (plus top-1 agreement)."
    )
    print(
        f"{'model':<8} {'variant':<12} {'thr':>3} {'x RT':>10} {'vs fp32 ORT':>11} "
        f"{'max |err|':>10} {'p99 |err|':>10} {'mean |err|':>10} {'top-1':>6}"
    )
    for name in ("cnn", "yamnet"):
        if name not in models:
            continue
        d = models[name]
        frames = d["inputs"][0][0]
        cal, cal_from = _calibration(name, frames, d["n_mels"])
        data = _golden_inputs(name)
        data = cal if data is None else data
        pre = tmp / f"{name}.pre.onnx"
        quant_pre_process(str(d["onnx"]), str(pre), skip_symbolic_shape=True)
        # YAMNet's classifier head stays float (it maps straight to the logits).
        exclude = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Gemm"]
        q8 = tmp / f"{name}.int8.onnx"
        quantize_static(
            str(pre),
            str(q8),
            Reader(cal),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
        ref = ort_session(d["onnx"], 2).run(None, {"mel": data})[0]
        got_q = ort_session(q8, 2).run(None, {"mel": data})[0]
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = d["module"](torch.from_numpy(data))
        got_b = (out[0] if isinstance(out, tuple) else out).float().numpy()

        def errs(got: np.ndarray) -> str:
            e = np.abs(got - ref)
            top1 = f"{np.mean(got.argmax(-1) == ref.argmax(-1)):>6.2f}" if name == "yamnet" else f"{'-':>6}"
            return f"{e.max():>10.3g} {np.percentile(e, 99):>10.3g} {e.mean():>10.3g} {top1}"

        print(f"  ({name}: calibrated on {len(cal)} inputs from {cal_from}; errors on {len(data)} inputs)")
        batch = 64
        x = np.resize(data, (batch, frames, d["n_mels"])).astype(np.float32)
        xt = torch.from_numpy(x)
        for th in threads:
            torch.set_num_threads(th)
            s32, s8 = ort_session(d["onnx"], th), ort_session(q8, th)
            t32 = best_time(lambda: s32.run(None, {"mel": x}), min_time)
            t8 = best_time(lambda: s8.run(None, {"mel": x}), min_time)

            def run_bf16() -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    d["module"](xt)

            tb = best_time(run_bf16, min_time)
            print(
                f"{name:<8} {'fp32 ORT':<12} {th:>3} {batch / t32:>10.0f} {1.0:>11.2f} {'-':>10} {'-':>10} "
                f"{'-':>10} {'-':>6}"
            )
            print(f"{name:<8} {'int8 QDQ ORT':<12} {th:>3} {batch / t8:>10.0f} {t32 / t8:>11.2f} {errs(got_q)}")
            print(
                f"{name:<8} {'bf16 torch':<12} {th:>3} {batch / tb:>10.0f} {t32 / tb:>11.2f} {errs(got_b)}", flush=True
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="cnn,yamnet,efficientat,resnet38", help="comma-separated models")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts to sweep")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of repeats per measurement")
    ap.add_argument("--quant", action="store_true", help="add int8 QDQ and bf16 for the CNN and YAMNet")
    ap.add_argument("--quick", action="store_true", help="short run (min-time 0.2 s)")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    threads = [int(t) for t in args.threads.split(",")]
    min_time = 0.2 if args.quick else args.min_time
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs; "
        f"unit: seconds of audio per wall second (x real time)"
    )
    with tempfile.TemporaryDirectory(prefix="bench_models_") as td:
        tmp = Path(td)
        models = load_models(only, tmp)
        for name, d in models.items():
            print(f"  {name}: weights {d['weights']}")
        bench(models, threads, min_time)
        if args.quant:
            bench_quant(models, threads, min_time, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
