"""Post-training int8 quantisation of a transcoder's CNN, measured against the float model.

``python -m training quantize MODEL.onnx -o MODEL-int8.onnx --cache CACHE_DIR [--classifier C.onnx]``

The CNN is the larger half of a pipeline's time on a CPU (benchmarks/bench_archive.py), and
its convolutions run about twice as fast in int8 on x86 (ONNX Runtime's QLinearConv).
ONNX Runtime's static quantiser writes a QDQ graph: int8 weights per output channel
(symmetric), uint8 activations per tensor with MinMax ranges calibrated on PINV Mels of
the cache's *training* split. Fidelity is then measured on the held-out *eval* split and
written into the file's metadata (``metrics["int8_vs_float"]``) and its model card:

* ``mel_mse``: mean squared difference between the int8 and float CNN outputs (log-Mel
  units squared), beside ``mel_var``, the variance of the float output;
* with a classifier: ``top1_agreement`` (1-s chunks whose best class is the same),
  ``kl`` (the paper's KL between per-file mean probabilities, float as the oracle; its
  definition is not bounded below by 0, so tiny differences can give a tiny negative value)
  and ``max_abs_prob_diff`` (the largest change of a per-file mean probability).

The result is a complete transcoder file (same specs, PINV and labels) under a new
registry name, ``<name>-int8`` by default; ``python -m training ship`` puts it in the package.

Only the transcoder CNN is quantised here. YAMNet itself loses too much with per-tensor
int8 activations (a few late MobileNet layers have channel ranges 100x apart).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from spectral_transcoder.errors import InvalidInputError

__all__ = ["quantize_transcoder", "add_parser"]

DEFAULT_CALIBRATION_CHUNKS = 256
_BATCH = 8


def _spread(rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows spread evenly over ``rows`` (all of them if there are fewer)."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(np.int64)]


def quantize_transcoder(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike,
    classifier: str | os.PathLike | None = None,
    name: str | None = None,
    calibration_chunks: int = DEFAULT_CALIBRATION_CHUNKS,
    eval_chunks: int | None = None,
) -> dict[str, Any]:
    """Write an int8 copy of the transcoder ``model`` to ``output`` (plus ``<stem>.md``).

    ``cache_dir``: a dataset cache built for the transcoder's band and Mel specs
    (``python -m training build-dataset``); ``calibration_chunks`` 1-s chunks of its
    training split (crops excluded) calibrate the activation ranges, and its eval split
    (``eval_chunks`` of it, default all) measures the result. ``classifier``: the
    teacher, to measure agreement of the class probabilities too. ``name``: the registry
    name (default ``<model name>-int8``).

    Returns the measured fidelity (also stored as ``metrics["int8_vs_float"]``).
    """
    import onnx
    import onnxruntime as ort  # for its version, recorded in the metadata
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from spectral_transcoder.models import Classifier, Transcoder, read_metadata
    from spectral_transcoder.registry import sha256_file

    from .cache import ChunkStore

    src = Path(model)
    meta, src_sha = read_metadata(src)
    if meta.kind != "transcoder":
        raise InvalidInputError(f"{src}: only transcoders are quantised, this is a {meta.kind}")
    tr = Transcoder.from_file(src, n_threads=1)
    if not tr.has_cnn:
        raise InvalidInputError(f"{src}: this transcoder has no CNN to quantise")
    store = ChunkStore(cache_dir)
    if store.band_spec.name != tr.input_spec.name or store.mel_spec.name != tr.output_spec.name:
        raise InvalidInputError(
            f"{cache_dir}: the cache holds {store.band_spec.name} -> {store.mel_spec.name}, the transcoder "
            f"{tr.input_spec.name} -> {tr.output_spec.name}"
        )
    cal_rows = _spread(store.rows("train", regular_only=True), calibration_chunks)
    eval_rows = store.rows("eval", regular_only=True)
    if eval_chunks is not None:
        eval_rows = _spread(eval_rows, eval_chunks)
    if len(cal_rows) < _BATCH or len(eval_rows) == 0:
        raise InvalidInputError(
            f"{cache_dir}: needs at least {_BATCH} training chunks and one eval chunk, "
            f"has {len(cal_rows)} and {len(eval_rows)}"
        )
    cal = tr.pinv_chunks(store.get(cal_rows, ("levels",))["levels"])
    cal = cal[: len(cal) // _BATCH * _BATCH]  # equal batches: the calibrators stack them

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(cal[i : i + _BATCH] for i in range(0, len(cal), _BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"mel": x}

    new_name = name or f"{meta.name}-int8"
    meta.name = new_name
    quantization = {
        "from": f"{src.name} (sha256 {src_sha})",
        "tool": f"onnxruntime {ort.__version__} quantize_static",
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, per tensor",
        "calibration": f"MinMax on {len(cal)} PINV chunks of the training split of {Path(cache_dir).name}",
    }
    meta.extra = {**meta.extra, "quantization": quantization}
    float_metrics = meta.metrics

    def with_metadata(model_proto: Any) -> Any:
        del model_proto.metadata_props[:]
        for k, v in meta.to_props().items():
            model_proto.metadata_props.add(key=k, value=v)
        return model_proto

    x = tr.pinv_chunks(store.get(eval_rows, ("levels",))["levels"])
    mel_f = tr.run_cnn(x)
    with tempfile.TemporaryDirectory(prefix="st-quantize-") as tmp:
        q_path = Path(tmp) / "q.onnx"
        quantize_static(
            str(src),
            str(q_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        qmodel = with_metadata(onnx.load(str(q_path)))
        onnx.save(qmodel, str(q_path))
        mel_q = Transcoder.from_file(q_path, n_threads=1).run_cnn(x)  # the package's own loader and batching
    if not np.isfinite(mel_q).all():
        raise InvalidInputError(f"{src}: the int8 CNN gives non-finite values on the eval split")
    fidelity: dict[str, Any] = {
        "eval_chunks": int(len(eval_rows)),
        "calibration_chunks": int(len(cal)),
        "mel_mse": float(np.mean((mel_q - mel_f) ** 2, dtype=np.float64)),
        "mel_var": float(np.var(mel_f, dtype=np.float64)),
    }
    if classifier is not None:
        from .evaluate import file_means, kl_divergence

        clf = Classifier.from_file(classifier, n_threads=1)
        p_f, p_q = clf(mel_f), clf(mel_q)
        file_ids = store.get(eval_rows, ("file_id",))["file_id"]
        per_file = [file_means(p, file_ids)[1] for p in (p_f, p_q)]
        fidelity.update(
            {
                "classifier": clf.model_id,
                "files": len(per_file[0]),
                "top1_agreement": float(np.mean(p_f.argmax(-1) == p_q.argmax(-1))),
                "kl": float(kl_divergence(per_file[0], per_file[1])),
                "max_abs_prob_diff": float(np.abs(per_file[0] - per_file[1]).max()),
            }
        )

    meta.metrics = {"float_model": float_metrics, "int8_vs_float": fidelity}
    with_metadata(qmodel)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(qmodel, str(out))
    out.with_suffix(".md").write_text(_card(new_name, src, src_sha, fidelity, quantization, sha256_file(out)))
    return fidelity


def _card(name: str, src: Path, src_sha: str, fid: dict[str, Any], quant: dict[str, Any], sha: str) -> str:
    lines = [
        f"# Transcoder `{name}` (int8)",
        "",
        f"The int8 version of `{src.stem}` (`{src.name}`, sha256 `{src_sha[:16]}…`): same PINV, same specs, "
        f"same labels; only the CNN's convolutions run in int8. Everything its own model card (`{src.stem}.md`) says "
        "about data, teacher, accuracy and status applies; what quantisation changes is measured below.",
        "",
        "## Quantisation",
        "",
        *(f"- {k}: {v}" for k, v in quant.items()),
        "",
        "## Int8 against float, on the held-out eval split",
        "",
        "| measure | value |",
        "|---|---|",
        f"| 1-s chunks | {fid['eval_chunks']} |",
        f"| Mel MSE int8 vs float (log-Mel²) | {fid['mel_mse']:.3g} |",
        f"| variance of the float CNN's Mel | {fid['mel_var']:.3g} |",
    ]
    if "top1_agreement" in fid:
        lines += [
            f"| best class unchanged (1-s chunks, {fid['classifier']}) | {100 * fid['top1_agreement']:.1f} % |",
            f"| KL int8 vs float, the paper's definition (per-file mean probabilities, {fid['files']} files; "
            f"it is not bounded below by 0) | {fid['kl']:.3g} |",
            f"| largest probability change (per-file means) | {fid['max_abs_prob_diff']:.3g} |",
        ]
    lines += ["", f"File sha256: `{sha}`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI
def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "quantize",
        help="int8 copy of a transcoder (its CNN), calibrated and measured on a dataset cache",
        description="Write an int8 copy of a transcoder: ONNX Runtime static quantisation (QDQ; int8 weights per "
        "channel, uint8 activations calibrated on PINV Mels of the cache's training split), then measured against "
        "the float model on the eval split. The figures go into the file's metadata and its model card (OUT.md).",
    )
    p.add_argument("model", metavar="MODEL.onnx", help="the float transcoder")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the int8 transcoder (+ OUT.md card)")
    p.add_argument(
        "--cache",
        required=True,
        metavar="CACHE_DIR",
        help="dataset cache for the transcoder's specs (build-dataset): train split calibrates, eval split measures",
    )
    p.add_argument(
        "--classifier",
        default=None,
        metavar="C.onnx",
        help="the teacher classifier, to measure agreement of the class probabilities too",
    )
    p.add_argument("--name", default=None, help="registry name (default: <model name>-int8)")
    p.add_argument("--calibration-chunks", type=int, default=DEFAULT_CALIBRATION_CHUNKS, metavar="N")
    p.add_argument("--eval-chunks", type=int, default=None, metavar="N", help="default: the whole eval split")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    fid = quantize_transcoder(
        args.model,
        args.output,
        cache_dir=args.cache,
        classifier=args.classifier,
        name=args.name,
        calibration_chunks=args.calibration_chunks,
        eval_chunks=args.eval_chunks,
    )
    print(json.dumps(fid, indent=1))
    print(f"wrote {args.output} and {Path(args.output).with_suffix('.md')}")
    return 0
