"""Transcoder / Classifier / classify plumbing on tiny ONNX models (no torch), and end to
end with the real converted models when torch and ../shared are present."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import (
    LABELS,
    cense26,
    classifier_metadata,
    classifier_reference,
    classifier_weights,
    cnn_kernel,
    cnn_reference,
    make_classifier,
    make_transcoder,
    transcoder_metadata,
)
from spectral_transcoder import models
from spectral_transcoder.errors import InputTypeError, InvalidInputError, ModelError, SpecMismatchError
from spectral_transcoder.models import ClassificationResult, Classifier, Transcoder, classify
from spectral_transcoder.pinv import PartialChunkWarning, pinv, pinv_matrix, split_chunks
from spectral_transcoder.specs import get_band_spec, get_mel_spec

REPO = Path(__file__).resolve().parents[1]


def _levels(n_frames: int, *lead: int, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    return (r.uniform(-80.0, -20.0, (*lead, n_frames, 29))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return {
        "cnn": make_transcoder(d / "cnn.onnx"),
        "cnn_fixed_batch": make_transcoder(d / "cnn_b1.onnx", batch=1),
        "cnn_yamnet": make_transcoder(d / "cnn_y.onnx", meta=transcoder_metadata("tiny-cnn-y", mel="yamnet_torchport")),
        "clf": make_classifier(d / "clf.onnx"),
        "clf_logits_first": make_classifier(d / "clf_lf.onnx", logits_first=True),
        "clf_yamnet": make_classifier(
            d / "clf_y.onnx", meta=classifier_metadata("tiny-yamnet", mel="yamnet_torchport"), frames=96
        ),
        "clf_yamnet_official_b1": make_classifier(
            d / "clf_yo.onnx", meta=classifier_metadata("tiny-yamnet-o", mel="yamnet"), frames=96, batch=1
        ),
    }


# --------------------------------------------------------------------- Transcoder
def test_pinv_transcoder_equals_pinv():
    tr = Transcoder.pinv("pann")
    x = _levels(24)
    assert tr.metadata is None and not tr.has_cnn and tr.model_id == "pinv-pann"
    assert tr.input_spec == get_band_spec("cense_fast") and tr.output_spec == get_mel_spec("pann")
    np.testing.assert_array_equal(tr(x), pinv(x, "pann"))
    assert tr(x).shape == (301, 64)  # 100 n + 1
    assert tr(x, layout="concat").shape == (303, 64)
    assert tr(x, layout="chunks").shape == (3, 101, 64)
    same = Transcoder.coerce("pinv:pann")
    assert same.model_id == "pinv-pann" and Transcoder.coerce(same) is same


def test_cnn_transcoder_loads_and_computes(tiny):
    tr = Transcoder.from_file(tiny["cnn"])
    meta = tr.metadata
    assert meta is not None and meta.kind == "transcoder" and meta.name == "tiny-cnn" and meta.metrics == {"mse": 1.5}
    assert tr.input_spec == get_band_spec("cense_fast") and tr.output_spec == get_mel_spec("pann")
    assert tr.has_cnn and tr.model_id.startswith("tiny-cnn@")
    x = _levels(16, 3)
    got = tr(x, layout="chunks")
    want = cnn_reference(pinv(x, "pann", layout="chunks"), cnn_kernel())
    assert got.shape == (3, 2, 101, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4)
    # stitched / concat are views of the same chunks
    np.testing.assert_array_equal(tr(x, layout="concat"), got.reshape(3, 202, 64))
    st = tr(x)
    assert st.shape == (3, 201, 64)
    np.testing.assert_array_equal(st[:, :100], got[:, 0, :100])
    np.testing.assert_array_equal(st[:, 100:], got[:, 1])


@pytest.mark.parametrize("key", ["cnn", "cnn_fixed_batch"])
def test_batching_is_invisible(tiny, key):
    x = _levels(8 * 13, 2, seed=3)
    ref = Transcoder.from_file(tiny[key], batch_size=1)(x, layout="chunks")
    for bs in (4, 64):
        tr = Transcoder.from_file(tiny[key], batch_size=bs, n_threads=1)
        np.testing.assert_allclose(tr(x, layout="chunks"), ref, rtol=0, atol=1e-5)
    # one by one along the batch axes == all at once
    tr = Transcoder.from_file(tiny[key], batch_size=5)
    for i in range(2):
        np.testing.assert_allclose(tr(x[i], layout="chunks"), ref[i], rtol=0, atol=1e-5)


def test_transcode_chunks_matches_call(tiny):
    tr = Transcoder.from_file(tiny["cnn"])
    x = _levels(40)
    chunks, n_valid = split_chunks(x, "cense_fast", "error")
    assert n_valid == 8
    np.testing.assert_array_equal(tr.transcode_chunks(chunks), tr(x, layout="chunks"))
    assert tr.transcode_chunks(chunks[None]).shape == (1, 5, 101, 64)


def test_level_convention_via_band_spec(tiny):
    tr = Transcoder.from_file(tiny["cnn"])
    x = _levels(16)
    np.testing.assert_allclose(tr(x + 26.0, band_spec=cense26()), tr(x), atol=1e-4)


def test_pinv_matrix_from_metadata(tmp_path):
    a = pinv_matrix("cense_fast", "pann") * 2.0  # a different A must be used, not recomputed
    path = make_transcoder(tmp_path / "m.onnx", kernel=np.zeros((3, 3), np.float32), meta=transcoder_metadata(matrix=a))
    tr = Transcoder.from_file(path)
    x = _levels(16)
    np.testing.assert_allclose(tr(x), pinv(x, "pann", matrix=a), atol=1e-5)
    assert not np.allclose(tr(x), pinv(x, "pann"), atol=1.0)
    bad = make_transcoder(tmp_path / "bad.onnx", meta=transcoder_metadata(matrix=np.ones((3, 29))))
    with pytest.raises(ModelError, match="st.pinv matrix has shape"):
        Transcoder.from_file(bad)


def test_transcoder_input_checks(tiny):
    tr = Transcoder.from_file(tiny["cnn"])
    with pytest.raises(InvalidInputError, match="28 bands"):
        tr(np.zeros((16, 28), np.float32))
    with pytest.raises(InvalidInputError, match="left over"):
        tr(_levels(12))
    with pytest.raises(SpecMismatchError, match="cense_slow.*cense_fast|frame_length"):
        tr(_levels(16), band_spec="cense_slow")
    with pytest.raises(InvalidInputError, match="layout"):
        tr(_levels(16), layout="wide")
    with pytest.raises(InvalidInputError, match="8 frames"):
        tr.transcode_chunks(np.zeros((2, 7, 29), np.float32))
    with pytest.raises(InvalidInputError, match=r"\(\.\.\., frames, 64\)"):
        tr.run_cnn(np.zeros((101, 63), np.float32))
    with pytest.raises(InvalidInputError, match="batch_size"):
        Transcoder.from_file(tiny["cnn"], batch_size=0)


def test_partial_chunks(tiny):
    tr = Transcoder.from_file(tiny["cnn"])
    x = _levels(19)
    with pytest.warns(PartialChunkWarning):
        padded = tr(x, partial="pad", layout="chunks")
    assert padded.shape == (3, 101, 64)
    with pytest.warns(PartialChunkWarning):
        dropped = tr(x, partial="drop", layout="chunks")
    np.testing.assert_array_equal(dropped, padded[:2])


def test_kind_mismatch_and_spec_fit(tiny, tmp_path):
    with pytest.raises(ModelError, match="is a classifier, not a transcoder"):
        Transcoder.from_file(tiny["clf"])
    with pytest.raises(ModelError, match="is a transcoder, not a classifier"):
        Classifier.from_file(tiny["cnn"])
    # a CNN with a fixed 64-bin input declared for efficientat (128 bins) is rejected at load
    path = make_transcoder(tmp_path / "x.onnx", meta=transcoder_metadata(mel="pann"))
    meta = transcoder_metadata(mel="efficientat")
    import onnx

    m = onnx.load(path)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, meta.to_props())
    onnx.save(m, tmp_path / "y.onnx")
    with pytest.raises(ModelError, match="does not fit the output spec"):
        Transcoder.from_file(tmp_path / "y.onnx")


# --------------------------------------------------------------------- Classifier
def test_classifier_loads_and_computes(tiny):
    clf = Classifier.from_file(tiny["clf"])
    assert clf.labels == LABELS and clf.input_spec == get_mel_spec("pann") and clf.metadata.license == "Apache-2.0"
    w, b = classifier_weights(64, len(LABELS))
    mel = np.random.default_rng(5).normal(-30, 10, (2, 3, 101, 64)).astype(np.float32)
    p = clf(mel)
    assert p.shape == (2, 3, 5) and p.dtype == np.float32
    np.testing.assert_allclose(p, classifier_reference(mel, w, b), atol=1e-5)
    np.testing.assert_allclose(clf(mel[1, 2]), p[1, 2], atol=1e-6)
    # variable length
    assert clf(mel[0, 0, :40]).shape == (5,)
    # `probs` is found by name even when it is not the first output
    np.testing.assert_allclose(Classifier.from_file(tiny["clf_logits_first"])(mel), p, atol=1e-6)


def test_classifier_batching_is_invisible(tiny):
    mel = np.random.default_rng(6).normal(-30, 10, (11, 101, 64)).astype(np.float32)
    ref = Classifier.from_file(tiny["clf"], batch_size=1)(mel)
    np.testing.assert_allclose(Classifier.from_file(tiny["clf"], batch_size=4)(mel), ref, atol=1e-6)


def test_classifier_checks(tiny):
    clf = Classifier.from_file(tiny["clf"])
    with pytest.raises(SpecMismatchError, match="'yamnet_torchport'.*'pann'"):
        clf.check_input("yamnet_torchport")
    clf.check_input("pann")
    clf.check_input(replace(get_mel_spec("pann"), name="renamed"))  # the numbers decide, not the name
    with pytest.raises(SpecMismatchError):
        clf(np.zeros((101, 64), np.float32), mel_spec="efficientat")
    with pytest.raises(InvalidInputError, match=r"128 Mel bins.*expected \(\.\.\., frames, 64\)"):
        clf(np.zeros((101, 128), np.float32))
    with pytest.raises(InvalidInputError, match="index"):
        clf(np.full((101, 64), np.nan, np.float32))
    with pytest.raises(InputTypeError):
        clf("mel")


def test_yamnet_style_patches(tiny):
    clf = Classifier.from_file(tiny["clf_yamnet"])
    w, b = classifier_weights(64, len(LABELS))
    mel = np.random.default_rng(7).normal(0, 1, (2, 301, 64)).astype(np.float32)
    pp = clf.patch_probabilities(mel)
    assert pp.shape == (2, 3, 5)  # patches at frames 0, 100, 200 (hop 100)
    for i, start in enumerate((0, 100, 200)):
        np.testing.assert_allclose(pp[:, i], classifier_reference(mel[:, start : start + 96], w, b), atol=1e-5)
    np.testing.assert_allclose(clf(mel), pp.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(clf(mel[:, :96]), pp[:, 0], atol=1e-6)
    with pytest.raises(InvalidInputError, match="at least 96 frames"):
        clf(mel[:, :95])
    # official front end: hop 48, model exported with a fixed batch of 1
    clf1 = Classifier.from_file(tiny["clf_yamnet_official_b1"], batch_size=8)
    p1 = clf1.patch_probabilities(mel[0, :240])
    assert p1.shape == (4, 5)
    np.testing.assert_allclose(p1[3], classifier_reference(mel[0, 144:240], w, b), atol=1e-5)


# --------------------------------------------------------------------- classify
def test_classify_per_second_and_10s_means(tiny):
    tr, clf = Transcoder.from_file(tiny["cnn"]), Classifier.from_file(tiny["clf"])
    x = _levels(8 * 23 + 3, seed=11)
    res = classify(x, classifier=clf, transcoder=tr, top_k=3)
    assert isinstance(res, ClassificationResult)
    assert res.probs.shape == (24, 5) and res.times.shape == (24,)
    np.testing.assert_allclose(res.times[:3], [0.0, 1.0, 2.0])
    assert res.padded and res.last_chunk_frames == 3
    # by hand: chunks -> transcoder -> classifier, each chunk on its own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialChunkWarning)
        chunks, _ = split_chunks(x, "cense_fast", "pad")
    by_hand = clf(tr.transcode_chunks(chunks))
    np.testing.assert_allclose(res.probs, by_hand, atol=1e-6)
    assert list(res.group_counts) == [10, 10, 4]
    np.testing.assert_allclose(res.group_times, [0.0, 10.0, 20.0])
    for g, (s, c) in enumerate(zip((0, 10, 20), res.group_counts)):
        np.testing.assert_allclose(res.group_probs[g], res.probs[s : s + c].mean(axis=0), atol=1e-6)
    top = res.top(3)
    assert len(top) == 3 and top == res.top_labels
    ps = [p for _, p in top]
    assert ps == sorted(ps, reverse=True)
    assert top[0][0] == LABELS[int(np.argmax(res.probs.mean(axis=0)))]
    assert res.classifier_id == clf.model_id and res.transcoder_id == tr.model_id


def test_classify_batch_axes_and_partial_modes(tiny):
    tr, clf = Transcoder.from_file(tiny["cnn"]), Classifier.from_file(tiny["clf"])
    x = _levels(8 * 12, 2, seed=12)
    res = classify(x, classifier=clf, transcoder=tr, top_k=2)
    assert res.probs.shape == (2, 12, 5) and res.group_probs.shape == (2, 2, 5) and not res.padded
    one = classify(x[1], classifier=clf, transcoder=tr)
    np.testing.assert_allclose(res.probs[1], one.probs, atol=1e-6)
    assert len(res.top_labels) == 2 and len(res.top_labels[0]) == 2
    with pytest.raises(InvalidInputError, match="left over"):
        classify(x[0, :20], classifier=clf, transcoder=tr, partial="error")
    assert classify(x[0, :20], classifier=clf, transcoder=tr, partial="drop").probs.shape == (2, 5)


def test_classify_spec_mismatch_and_paths(tiny):
    with pytest.raises(SpecMismatchError, match="pann.*yamnet_torchport"):
        classify(_levels(8), classifier=tiny["clf_yamnet"], transcoder=tiny["cnn"])
    # paths, and a PINV-only transcoder for a yamnet_torchport classifier (96 frames per chunk)
    res = classify(_levels(16), classifier=str(tiny["clf_yamnet"]), transcoder=Transcoder.pinv("yamnet_torchport"))
    assert res.probs.shape == (2, 5) and res.transcoder_id == "pinv-yamnet_torchport"
    res2 = classify(_levels(16) + 26, classifier=tiny["clf_yamnet"], transcoder=tiny["cnn_yamnet"], band_spec=cense26())
    assert res2.probs.shape == (2, 5)
    with pytest.raises(InputTypeError):
        classify(_levels(8), classifier=3, transcoder=tiny["cnn"])


# --------------------------------------------------------------------- errors
def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*python -m training convert.*models import"):
        Transcoder.from_file(tmp_path / "nope.onnx")


def test_truncated_and_corrupt_files(tiny, tmp_path):
    data = Path(tiny["clf"]).read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="trunc.onnx.*truncated or corrupt"):
        Classifier.from_file(tmp_path / "trunc.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not an onnx file" * 10)
    with pytest.raises(ModelError, match="junk.onnx"):
        Classifier.from_file(tmp_path / "junk.onnx")


def test_file_without_metadata(tmp_path):
    path = make_transcoder(tmp_path / "plain.onnx", with_meta=False)
    with pytest.raises(ModelError, match="not a spectral_transcoder model file"):
        Transcoder.from_file(path)


def test_checksum_argument(tiny):
    with pytest.raises(ModelError, match="checksum"):
        Classifier.from_file(tiny["clf"], expected_sha256="0" * 64)


def test_session_options():
    so = models.session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    import onnxruntime as ort

    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert models.session_options().intra_op_num_threads == models.physical_cores() >= 1
    assert models.physical_cores() <= (os.cpu_count() or 1)
    provs = models.default_providers()
    assert provs[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in provs) == ("CUDAExecutionProvider" in ort.get_available_providers())
    with pytest.raises(InvalidInputError):
        models.session_options(-1)


# --------------------------------------------------------------------- real models
@pytest.mark.torch
@pytest.mark.shared
def test_classify_real_yamnet_equals_steps_by_hand(real_yamnet, golden_clip):
    import onnxruntime as ort

    tr_path, clf_path = real_yamnet
    tr, clf = Transcoder.from_file(tr_path), Classifier.from_file(clf_path)
    assert tr.output_spec == clf.input_spec == get_mel_spec("yamnet_torchport")
    assert len(clf.labels) == 521
    tho = golden_clip["tho_db_chunks"].astype(np.float32)  # (10, 8, 29), +26 convention
    res = classify(tho.reshape(-1, 29), classifier=clf, transcoder=tr, band_spec=cense26(), top_k=5)
    # by hand: PINV chunks -> ORT CNN session -> ORT classifier session
    from spectral_transcoder.pinv import pinv_chunks

    matrix = None
    if tr.metadata.pinv and tr.metadata.pinv.get("matrix") is not None:
        matrix = np.asarray(tr.metadata.pinv["matrix"], np.float32)
    mels = pinv_chunks(tho, "yamnet_torchport", band_spec=cense26(), matrix=matrix)
    s_tr = ort.InferenceSession(str(tr_path), providers=["CPUExecutionProvider"])
    s_clf = ort.InferenceSession(str(clf_path), providers=["CPUExecutionProvider"])
    cnn = s_tr.run(None, {s_tr.get_inputs()[0].name: mels})[0]
    probs = s_clf.run(["probs"], {s_clf.get_inputs()[0].name: cnn})[0]
    np.testing.assert_allclose(res.probs, probs, rtol=0, atol=1e-6)
    assert res.probs.shape == (10, 521) and list(res.group_counts) == [10]
    np.testing.assert_allclose(res.group_probs[0], res.probs.mean(axis=0), atol=1e-6)
    # and the CNN output is the golden transcoded Mel (tolerance of reference/golden/README.md §7)
    np.testing.assert_allclose(cnn, golden_clip["mel_yamnet_cnn_logits_chunks"], atol=2e-3)
