"""Pipeline: the transcoder and classifier resolved, and their specs checked, once for
classify, process and plot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import spectral_transcoder as st
from archives_testutil import grid_times, levels, write_parquet
from spectral_transcoder import registry
from spectral_transcoder.archives import process as P
from spectral_transcoder.errors import ModelError, SpecMismatchError
from spectral_transcoder.models import Classifier, Transcoder, classify
from spectral_transcoder.pipeline import Pipeline
from spectral_transcoder.specs import get_band_spec

MISMATCH = r"the transcoder tiny-cnn@\w+ produces Mel spec 'pann' but the classifier tiny-yamnet@\w+ expects "
MISMATCH += r"'yamnet_torchport' \(they differ in: .*\)"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    lv = levels(8 * 20) - 100.0
    return write_parquet(tmp_path_factory.mktemp("arch") / "s.parquet", grid_times(len(lv)), lv)


def test_resolve_by_path_and_instance(tiny):
    pipe = Pipeline.resolve(tiny["clf"], tiny["tr"], n_threads=1, batch_size=3)
    assert isinstance(pipe.transcoder, Transcoder) and isinstance(pipe.classifier, Classifier)
    assert pipe.transcoder.batch_size == 3 and pipe.classifier.batch_size == 3
    assert pipe.input_spec == get_band_spec("cense_fast")
    tr, clf = Transcoder.from_file(tiny["tr"]), Classifier.from_file(tiny["clf"])
    same = Pipeline.resolve(clf, tr)
    assert same.transcoder is tr and same.classifier is clf  # instances pass through
    assert Pipeline.resolve(str(tiny["clf"]), "pinv:pann").transcoder.model_id == "pinv-pann"
    with pytest.raises(AttributeError):
        same.transcoder = tr  # type: ignore[misc]  # frozen
    assert st.Pipeline is Pipeline  # exported from the package, lazily


def test_resolve_by_registry_name(home, tiny):
    registry.import_model(tiny["clf"], name="my-clf")
    registry.import_model(tiny["tr"], name="my-tr")
    pipe = Pipeline.resolve("my-clf", "my-tr")
    assert pipe.classifier.name == "tiny-clf" and pipe.transcoder.name == "tiny-cnn"


def test_default_transcoder(tiny, monkeypatch):
    with pytest.raises(ModelError, match="no default transcoder for the classifier 'tiny-clf'"):
        Pipeline.resolve(tiny["clf"])
    monkeypatch.setitem(registry.DEFAULT_TRANSCODERS, "tiny-clf", "pinv:pann")
    assert Pipeline.resolve(tiny["clf"]).transcoder.model_id == "pinv-pann"


def test_spec_mismatch(tiny):
    with pytest.raises(SpecMismatchError, match=MISMATCH):
        Pipeline.resolve(tiny["clf_yamnet"], tiny["tr"])
    tr, clf = Transcoder.from_file(tiny["tr"]), Classifier.from_file(tiny["clf_yamnet"])
    with pytest.raises(SpecMismatchError, match=MISMATCH):
        Pipeline(tr, clf)  # built directly, checked all the same


def test_band_spec(tiny):
    pipe = Pipeline.resolve(tiny["clf"], tiny["tr"])
    fast = get_band_spec("cense_fast")
    assert pipe.band_spec() == fast and pipe.band_spec("cense_fast") == fast
    plus26 = replace(fast, db_offset=26.0)
    assert pipe.band_spec(plus26) == plus26 and pipe.band_spec(plus26, where="a.zip") == plus26
    assert pipe.band_spec(where="a.zip") == fast
    with pytest.raises(SpecMismatchError, match=r"^band_spec 'cense_slow' does not match the transcoder"):
        pipe.band_spec("cense_slow")
    arch = r"the archive's band spec 'cense_slow' \(29 bands, 1-s frames\) cannot be classified with the transcoder"
    with pytest.raises(SpecMismatchError, match=r"^sensor\.zip: " + arch):
        pipe.band_spec("cense_slow", where="sensor.zip")
    with pytest.raises(SpecMismatchError, match="^" + arch):
        pipe.band_spec("cense_slow", where="")
    # process's public helper gives the same message
    with pytest.raises(SpecMismatchError, match=r"^sensor\.zip: " + arch):
        P.check_band_spec(pipe.transcoder, get_band_spec("cense_slow"), "sensor.zip")


def _counting(monkeypatch) -> list[tuple[object, object]]:
    calls: list[tuple[object, object]] = []
    real = Pipeline.resolve.__func__  # type: ignore[attr-defined]

    def resolve(cls, classifier, transcoder=None, **kw):
        calls.append((classifier, transcoder))
        return real(cls, classifier, transcoder, **kw)

    monkeypatch.setattr(Pipeline, "resolve", classmethod(resolve))
    return calls


def test_classify_process_and_plot_go_through_it(tmp_path, tiny, archive, monkeypatch):
    calls = _counting(monkeypatch)
    classify(levels(16) - 100.0, classifier=tiny["clf"], transcoder=tiny["tr"])
    assert calls == [(tiny["clf"], tiny["tr"])]
    P._CACHE.clear()
    s = P.process([archive], tmp_path / "out", classifier=tiny["clf"], transcoder=tiny["tr"], progress=False)
    assert s.rows > 0 and len(calls) == 2  # loaded once in this process, then cached
    pytest.importorskip("matplotlib")
    from spectral_transcoder.plot import plot_file

    plot_file(archive, tmp_path / "p.png", classifier=tiny["clf"], transcoder=tiny["tr"], duration=10)
    assert len(calls) == 3


def test_the_same_errors_everywhere(tmp_path, tiny, archive):
    lv = levels(16) - 100.0
    with pytest.raises(SpecMismatchError, match=MISMATCH):
        classify(lv, classifier=tiny["clf_yamnet"], transcoder=tiny["tr"])
    with pytest.raises(SpecMismatchError, match=MISMATCH):
        P.process([archive], tmp_path / "o", classifier=tiny["clf_yamnet"], transcoder=tiny["tr"], progress=False)
    slow = r"the archive's band spec 'cense_slow' \(29 bands, 1-s frames\) cannot be classified"
    with pytest.raises(SpecMismatchError, match=r"s\.parquet: " + slow):
        P.process(
            [archive], tmp_path / "o2", classifier=tiny["clf"], transcoder=tiny["tr"], progress=False, spec="cense_slow"
        )
    with pytest.raises(SpecMismatchError, match="does not match the transcoder"):
        classify(
            np.zeros((2, 29), np.float32) - 60, classifier=tiny["clf"], transcoder=tiny["tr"], band_spec="cense_slow"
        )
    pytest.importorskip("matplotlib")
    from spectral_transcoder.plot import plot_file

    with pytest.raises(SpecMismatchError, match=MISMATCH):
        plot_file(archive, tmp_path / "x.png", classifier=tiny["clf_yamnet"], transcoder=tiny["tr"])
    with pytest.raises(SpecMismatchError, match=r"s\.parquet: " + slow):
        plot_file(archive, tmp_path / "x.png", classifier=tiny["clf"], transcoder=tiny["tr"], spec="cense_slow")
