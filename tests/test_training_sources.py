"""training.sources: the training-audio index on a tiny fake tree (no apt, no network, no torch).

The tree mimics the layouts the index walks: dpkg's ``<pkg>.list`` files and
``/usr/share/doc/<pkg>/copyright`` under a fake root, an UrbanSound8K-like and a
field-recordings folder, the rendered-MIDI folder with its manifest, and an extra folder.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import sources
from training.source_catalogue import MIDI_PACKAGES, PACKAGES, package_licence
from training.sources import SourceRecord, assign_split, build_index, load_index, record_split, write_index

REPO = Path(__file__).resolve().parents[1]
RATE = 16000


def _tone(path: Path, seconds: float = 1.0, freq: float = 440.0, channels: int = 1, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, rate, subtype="PCM_16")
    return path


def _package(root: Path, name: str, files: list[str], copyright_text: str) -> None:
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True, exist_ok=True)
    dirs = sorted({str(Path(f).parent) for f in files})
    (info / f"{name}.list").write_text("/.\n" + "\n".join(dirs + files) + "\n")
    doc = root / "usr/share/doc" / name
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(copyright_text)


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
License: GPL-2+

Files: sounds/*
License: CC-BY-SA-3.0

Files: debian/*
License: GPL-3+
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    root, shared, audio_sources, extra = base / "root", base / "shared", base / "audio-sources", base / "extra"
    ast = "/usr/share/asterisk/sounds"
    _tone(root / f"{ast[1:]}/en_US_f_Allison/hello-world.wav", 1.0, 300)
    _tone(root / f"{ast[1:]}/en_US_f_Allison/digits/1.wav", 0.8, 350)
    (root / f"{ast[1:]}/en_US_f_Allison/silence").mkdir()  # excluded by a rule, never probed
    sf.write(root / f"{ast[1:]}/en_US_f_Allison/silence/1.wav", np.zeros(RATE), RATE)
    _tone(root / f"{ast[1:]}/fr_CA_f_June/hello-world.wav", 1.2, 400)
    _package(
        root,
        "asterisk-core-sounds-en-wav",
        [
            f"{ast}/en_US_f_Allison/hello-world.wav",
            f"{ast}/en_US_f_Allison/digits/1.wav",
            f"{ast}/en_US_f_Allison/silence/1.wav",
        ],
        DEP5,
    )
    _package(root, "asterisk-core-sounds-fr-wav", [f"{ast}/fr_CA_f_June/hello-world.wav"], DEP5)
    # a sound-effects package with every kind of bad file, and a free-form copyright file
    wav = root / "usr/share/sounds/freedesktop/stereo"
    _tone(wav / "01-0.wav", 0.9, 500)
    (wav / "01-1.wav").write_bytes((wav / "01-0.wav").read_bytes())  # byte-identical copy
    sf.write(wav / "silent.wav", np.zeros(RATE, dtype=np.int16), RATE, subtype="PCM_16")
    _tone(wav / "short.wav", 0.2, 600)
    (wav / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    _package(
        root,
        "sound-theme-freedesktop",
        [
            f"/usr/share/sounds/freedesktop/stereo/{n}"
            for n in ("01-0.wav", "01-1.wav", "silent.wav", "short.wav", "corrupt.wav")
        ],
        "Sounds: http://creativecommons.org/licenses/by/3.0/\n",
    )
    # a stamp's sound and its spoken descriptions share one group; one ambience
    st = "/usr/share/tuxpaint/stamps/animals"
    _tone(root / f"{st[1:]}/cat.wav", 1.0, 700)
    _tone(root / f"{st[1:]}/cat_desc.wav", 1.1, 710)
    _tone(root / f"{st[1:]}/cat_desc_fr.wav", 1.3, 720, channels=2)
    _package(
        root, "tuxpaint-stamps-default", [f"{st}/{n}" for n in ("cat.wav", "cat_desc.wav", "cat_desc_fr.wav")], DEP5
    )
    _tone(root / "usr/share/games/megaglest/tilesets/forest/sounds/rain.wav", 2.0, 800)
    _tone(root / "usr/share/games/megaglest/data/core/menu/music/menu.wav", 2.0, 810)
    _package(
        root,
        "megaglest-data",
        [
            "/usr/share/games/megaglest/tilesets/forest/sounds/rain.wav",
            "/usr/share/games/megaglest/data/core/menu/music/menu.wav",
        ],
        DEP5,
    )
    # shared data
    us8k = shared / "urbansound8k-subset"
    _tone(us8k / "fold1/101415-3-0-2.wav", 1.0, 900)
    _tone(us8k / "fold1/101415-3-0-3.wav", 1.0, 910)
    _tone(us8k / "fold2/102305-6-0-0.wav", 1.0, 920)
    _tone(shared / "field-recordings/park-london-96-2684-a.wav", 1.5, 930)
    _tone(shared / "field-recordings/car.wav", 1.5, 940)
    # rendered MIDI: one ok, one failed
    midi = audio_sources / "midi"
    _tone(midi / "mma/mma/lib/x.flac", 3.0, 950, rate=32000)
    (midi / "manifest.tsv").write_text(
        "package\tmidi\tflac\tstatus\n"
        "mma\t/usr/share/mma/lib/x.mid\tmma/mma/lib/x.flac\tok\n"
        "mma\t/usr/share/mma/lib/y.mid\tmma/mma/lib/y.flac\tfailed\n"
    )
    _tone(extra / "song.wav", 1.0, 960)
    return {"root": root, "shared": shared, "audio_sources": audio_sources, "extra": extra}


@pytest.fixture(scope="module")
def index(tree) -> dict:
    return build_index(
        root=tree["root"],
        shared=tree["shared"],
        audio_sources=tree["audio_sources"],
        extra=[f"music={tree['extra']}"],
        jobs=2,
    )


def _by_name(index: dict) -> dict[str, dict]:
    return {
        Path(r["path"]).name if "asterisk" not in r["path"] else r["path"].split("sounds/")[1]: r
        for r in index["records"]
    }


def test_records_domains_groups_and_probe(index, tree):
    recs = _by_name(index)
    assert set(recs) == {
        "en_US_f_Allison/hello-world.wav",
        "en_US_f_Allison/digits/1.wav",
        "fr_CA_f_June/hello-world.wav",
        "01-0.wav",
        "cat.wav",
        "cat_desc.wav",
        "cat_desc_fr.wav",
        "rain.wav",
        "menu.wav",
        "101415-3-0-2.wav",
        "101415-3-0-3.wav",
        "102305-6-0-0.wav",
        "park-london-96-2684-a.wav",
        "car.wav",
        "x.flac",
        "song.wav",
    }
    en, fr = recs["en_US_f_Allison/hello-world.wav"], recs["fr_CA_f_June/hello-world.wav"]
    assert en["group"] == fr["group"] == "asterisk:hello-world"
    assert recs["en_US_f_Allison/digits/1.wav"]["group"] == "asterisk:digits/1"
    assert (en["domain"], en["source"], en["sample_rate"], en["channels"]) == (
        "speech",
        "asterisk-core-sounds-en-wav",
        RATE,
        1,
    )
    assert fr["duration_s"] == pytest.approx(1.2)
    assert {recs[n]["group"] for n in ("cat.wav", "cat_desc.wav", "cat_desc_fr.wav")} == {"tuxpaint:animals/cat"}
    assert [recs[n]["domain"] for n in ("cat.wav", "cat_desc.wav", "cat_desc_fr.wav")] == ["sfx", "speech", "speech"]
    assert recs["cat_desc_fr.wav"]["channels"] == 2
    assert (recs["rain.wav"]["domain"], recs["menu.wav"]["domain"]) == ("environment", "music")
    assert recs["01-0.wav"]["group"] == "sound-theme-freedesktop:usr/share/sounds/freedesktop/stereo/01-0.wav"
    u1, u2 = recs["101415-3-0-2.wav"], recs["102305-6-0-0.wav"]
    assert (u1["group"], u1["fold"], u1["domain"], u1["source"]) == ("us8k:101415", 1, "urban", "urbansound8k")
    assert recs["101415-3-0-3.wav"]["group"] == "us8k:101415"
    assert (u2["group"], u2["fold"]) == ("us8k:102305", 2)
    assert recs["park-london-96-2684-a.wav"]["group"] == "tau:park-london-96"
    assert recs["car.wav"]["group"] == "field:car.wav" and recs["car.wav"]["domain"] == "field"
    x = recs["x.flac"]
    assert (x["group"], x["source"], x["domain"], x["sample_rate"]) == (
        "midi:/usr/share/mma/lib/x.mid",
        "mma",
        "music",
        32000,
    )
    assert recs["song.wav"]["domain"] == "music" and recs["song.wav"]["source"] == "extra:extra"
    assert all(Path(r["path"]).is_absolute() for r in index["records"])


def test_licences(index):
    recs = _by_name(index)
    assert recs["en_US_f_Allison/hello-world.wav"]["licence"] == "CC-BY-SA-3.0"  # 'Files: sounds/*' matches
    assert recs["cat.wav"]["licence"] == "GPL-2+"  # only 'Files: *' matches
    assert recs["01-0.wav"]["licence"] == "CC-BY-3.0"  # free-form copyright file
    assert recs["101415-3-0-2.wav"]["licence"] == "CC-BY-NC-3.0"
    assert "research" in recs["park-london-96-2684-a.wav"]["licence"]
    assert package_licence("megaglest-data", root=index["root"]) == "GPL-2+, CC-BY-SA-3.0"
    assert package_licence("megaglest-data", "/usr/share/games/x/sounds/a.wav", index["root"]) == "CC-BY-SA-3.0"
    assert package_licence("no-such-package", root=index["root"]).startswith("unknown")


def test_skips_are_counted_with_reasons(index):
    assert index["skipped"] == {"duplicate": 1, "silent": 1, "too_short": 1, "unreadable": 1}
    ex = index["skipped_examples"]
    assert "01-1.wav" in ex["duplicate"][0] and "01-0.wav" in ex["duplicate"][0]
    assert "silent.wav" in ex["silent"][0] and "short.wav" in ex["too_short"][0]
    assert "corrupt.wav" in ex["unreadable"][0]
    assert not any("silence" in r["path"] for r in index["records"])  # excluded by a rule, not probed
    assert "hedgewars-data" in index["packages_missing"]
    assert "asterisk-core-sounds-en-wav" not in index["packages_missing"]


def test_summary(index):
    s = index["summary"]
    assert s["files"] == len(index["records"])
    assert s["by_domain"]["urban"]["files"] == 3 and s["by_domain"]["urban"]["groups"] == 2
    assert s["by_source"]["tuxpaint-stamps-default"]["domains"] == {"speech": 2, "sfx": 1}
    assert s["hours"] == pytest.approx(sum(r["duration_s"] for r in index["records"]) / 3600, abs=1e-3)


def test_write_and_load_roundtrip(index, tmp_path):
    out = tmp_path / "sub" / "index.json"
    write_index(index, out)
    assert [p.name for p in out.parent.iterdir()] == ["index.json"]  # no temporary file left
    records = load_index(out)
    assert all(isinstance(r, SourceRecord) for r in records) and len(records) == len(index["records"])
    assert records[0].path == index["records"][0]["path"]
    (tmp_path / "bad.json").write_text(json.dumps({"records": []}))
    with pytest.raises(ValueError, match="not an audio-sources index"):
        load_index(tmp_path / "bad.json")


def test_midi_folder_without_manifest(tree, tmp_path):
    midi = tmp_path / "midi" / "simutrans-data" / "games/simutrans/music"
    _tone(midi / "song.flac", 1.0)
    idx = build_index(root=tree["root"], shared=None, audio_sources=tmp_path, packages=False)
    assert [r["group"] for r in idx["records"]] == ["midi:/usr/share/games/simutrans/music/song"]


def test_assign_split_is_deterministic_and_pinned():
    kw = {"heldout_fraction": 0.3, "valid_fraction": 0.1}
    groups = [f"g{i}" for i in range(4000)]
    first = [assign_split(g, **kw) for g in groups]
    assert first == [assign_split(g, **kw) for g in groups]
    frac = {s: first.count(s) / len(groups) for s in sources.SPLITS}
    assert frac["train"] == pytest.approx(0.7, abs=0.03) and frac["valid"] == pytest.approx(0.1, abs=0.02)
    # pinned: the rule is a sha256 of salt + "\x1f" + group, the same on every machine
    assert {g: first[int(g[1:])] for g in PINNED} == PINNED
    assert [assign_split(f"us8k:{i}", fold=2, **kw) for i in range(4)] == ["valid", "test", "valid", "test"]
    assert [assign_split(f"g{i}", salt="other", **kw) for i in range(200)] != first[:200]
    with pytest.raises(ValueError):
        assign_split("g", heldout_fraction=0.1, valid_fraction=0.2)


PINNED = {"g0": "test", "g1": "train", "g2": "test", "g13": "test", "g25": "valid", "g30": "train"}


def test_us8k_fold_override():
    kw = {"heldout_fraction": 0.2, "valid_fraction": 0.1}
    ids = [f"us8k:{i}" for i in range(400)]
    assert {assign_split(g, fold=1, **kw) for g in ids} == {"train"}
    fold2 = [assign_split(g, fold=2, **kw) for g in ids]
    assert set(fold2) == {"valid", "test"}
    assert fold2.count("valid") / len(fold2) == pytest.approx(0.5, abs=0.1)
    assert {assign_split(g, heldout_fraction=1.0, valid_fraction=0.0) for g in ids} == {"test"}
    # the override is only for UrbanSound8K groups
    assert assign_split("field:x", fold=2, heldout_fraction=0.0, valid_fraction=0.0) == "train"


def test_a_group_never_spans_two_splits(index):
    for kw in ({"heldout_fraction": 0.5, "valid_fraction": 0.25}, {"heldout_fraction": 0.9, "valid_fraction": 0.1}):
        splits: dict[str, set[str]] = defaultdict(set)
        for r in load_index_records(index):
            splits[r.group].add(record_split(r, **kw))
        assert all(len(v) == 1 for v in splits.values())
        recs = {Path(r.path).name: r for r in load_index_records(index)}
        assert record_split(recs["101415-3-0-2.wav"], **kw) == "train"
        assert record_split(recs["102305-6-0-0.wav"], **kw) in ("valid", "test")


def load_index_records(index: dict) -> list[SourceRecord]:
    return [SourceRecord(**r) for r in index["records"]]


def test_install_script_lists_the_table_packages():
    script = REPO / "training" / "install_audio_sources.sh"
    out = subprocess.run(["bash", str(script), "--print-packages"], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == set(PACKAGES) | set(MIDI_PACKAGES)
    out = subprocess.run(["bash", str(script), "--print-midi-packages"], capture_output=True, text=True, check=True)
    assert tuple(out.stdout.split()) == MIDI_PACKAGES


def test_cli_index(tree, tmp_path, capsys):
    pytest.importorskip("torch")  # training's CLI registers the pipeline commands, which import torch
    from training.cli import main

    out = tmp_path / "cli.json"
    rc = main(
        [
            "sources",
            "index",
            "-o",
            str(out),
            "--root",
            str(tree["root"]),
            "--shared",
            str(tree["shared"]),
            "--audio-sources",
            str(tree["audio_sources"]),
            "--extra",
            str(tree["extra"]),
            "--jobs",
            "1",
        ]
    )
    assert rc == 0
    assert "skipped: duplicate 1, silent 1, too_short 1, unreadable 1" in capsys.readouterr().out
    records = load_index(out)
    assert {r.domain for r in records if r.source == "extra:extra"} == {"extra"}
