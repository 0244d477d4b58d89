import csv
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from emorig.cli.main import main
from emorig.emotion.base import EmotionRecognizer
from emorig.emotion.metrics import emotion_metrics, format_table
from emorig.emotion.predict import (
    COLUMNS,
    DONE,
    FAILED,
    NO_FACE,
    UNREADABLE,
    PredictionRow,
    evaluate_predictions,
    parse_expression,
    predict_files,
    read_labels,
    read_predictions,
    write_predictions,
)
from emorig.faces.pipeline import AlignResult
from emorig.types import EMOTION_CLASSES, EmotionOutput

skimage_data = pytest.importorskip("skimage.data")


class StubRecognizer(EmotionRecognizer):
    """Deterministic stand-in following the documented API: FER-like (no contempt)."""

    name = "stub"
    feature_dim = 3
    input_size = 224

    def __init__(self, predicts_va: bool = True):
        super().__init__()
        self.predicts_va = predicts_va
        self.gain = torch.nn.Parameter(torch.tensor(5.0))

    def forward(self, images):
        assert images.shape[1:] == (3, 224, 224)
        m = images.mean((2, 3))
        raw = torch.stack([m[:, 0], m[:, 1], m[:, 2], m.sum(1), -m[:, 0], -m[:, 1], -m[:, 2]], 1)
        logits = torch.log_softmax(self.gain * raw, 1)
        logits = torch.cat([logits, torch.full_like(logits[:, :1], -torch.inf)], 1)
        va = torch.tanh(m[:, :2] - 0.5) if self.predicts_va else None
        return EmotionOutput(logits, va, m)


@pytest.fixture
def stub_recognizers(monkeypatch):
    """Route ``load_recognizer`` (imported lazily by the CLI) to the stub."""
    fake = types.ModuleType("emorig.emotion.recognizers")
    fake.load_recognizer = lambda spec, device=None: StubRecognizer(predicts_va=spec != "no-va")
    monkeypatch.setitem(sys.modules, "emorig.emotion.recognizers", fake)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    src = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(src / "astronaut.png")
    Image.fromarray(np.full((160, 160, 3), 90, np.uint8)).save(src / "wall.png")
    (src / "notes.txt").write_text("not a photo")
    return src


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_cli_predict_csv(photos, tmp_path, capsys, stub_recognizers):
    out = tmp_path / "pred" / "emotions.csv"
    code = main(["emotion", "predict", str(photos), "--recognizer", "stub", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # one photo without a face, one non-image
    assert "3 files, 1 faces: 1 done, 1 no face, 1 unreadable, 0 failed" in captured.out
    assert f"with stub -> {out}" in captured.out
    assert "wall.png: no face found" in captured.err
    assert "unreadable: " in captured.err
    assert "notes.txt" in captured.err
    table = read_csv(out)
    assert tuple(table[0]) == COLUMNS
    rows = {r[0].rsplit("/", 1)[-1]: dict(zip(COLUMNS, r, strict=True)) for r in table[1:]}
    assert sorted(rows) == ["astronaut.png", "notes.txt", "wall.png"]
    face = rows["astronaut.png"]
    probs = np.array([float(face[c]) for c in EMOTION_CLASSES])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert face["contempt"] == "0.000000"
    assert face["expression"] == EMOTION_CLASSES[int(probs.argmax())]
    assert face["face"] == "0"
    assert face["status"] == DONE
    assert -1 <= float(face["valence"]) <= 1
    assert -1 <= float(face["arousal"]) <= 1
    assert rows["wall.png"]["status"] == NO_FACE
    assert rows["wall.png"]["face"] == rows["wall.png"]["happy"] == ""
    assert rows["notes.txt"]["status"] == UNREADABLE
    assert rows["notes.txt"]["reason"]


def test_cli_predict_json_without_va(photos, tmp_path, capsys, stub_recognizers):
    out = tmp_path / "emotions.json"
    photo = photos / "astronaut.png"
    args = [str(photo), "--recognizer", "no-va", "--out", str(out), "--all-faces"]
    code = main(["emotion", "predict", *args])
    assert code == 0
    assert "1 files, 1 faces: 1 done" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["classes"] == list(EMOTION_CLASSES)
    (row,) = payload["rows"]
    assert row["valence"] is None
    assert row["arousal"] is None
    assert sum(row[c] for c in EMOTION_CLASSES) == pytest.approx(1.0, abs=1e-6)
    assert read_predictions(out)[0].expression == row["expression"]


def test_cli_predict_usage_errors(photos, tmp_path, capsys, stub_recognizers):
    args = ["emotion", "predict", str(photos), "--recognizer", "stub", "--out"]
    assert main([*args, str(tmp_path / "x.txt")]) == 2
    assert "name a .csv or .json file" in capsys.readouterr().err
    missing = str(tmp_path / "none")
    assert (
        main(["emotion", "predict", missing, "--recognizer", "x", "--out", f"{missing}.csv"]) == 2
    )
    assert "not found" in capsys.readouterr().err
    assert main(["emotion"]) == 2


class ScriptedAligner:
    """Aligner stand-in: file name -> what happens."""

    all_faces = True

    def align_file(self, path):
        from emorig.faces.pipeline import AlignedFace

        if path.name == "boom.png":
            raise RuntimeError("detector crashed\nsecond line")
        n = {"two.png": 2, "one.png": 1}.get(path.name, 0)
        face = AlignedFace(
            torch.full((3, 224, 224), 0.5), np.zeros((68, 2)), np.zeros((68, 2)), np.eye(3),
            None, (224, 224), "deca",
        )  # fmt: skip
        status = "several faces" if n > 1 else ("done" if n else "no face")
        return AlignResult(str(path), status, [face] * n, n, "2 faces: kept each" if n > 1 else "")


def test_predict_files_reports_every_file(tmp_path):
    files = [tmp_path / n for n in ("one.png", "boom.png", "two.png", "empty.png")]
    rows = predict_files(files, StubRecognizer(), ScriptedAligner())
    assert [(r.path.rsplit("/", 1)[-1], r.face, r.status) for r in rows] == [
        ("one.png", 0, DONE),
        ("boom.png", None, FAILED),
        ("two.png", 0, DONE),
        ("two.png", 1, DONE),
        ("empty.png", None, NO_FACE),
    ]
    assert rows[1].reason == "RuntimeError: detector crashed"
    assert rows[2].reason == "2 faces: kept each"
    for path in (tmp_path / "p.csv", tmp_path / "p.json"):
        write_predictions(rows, path)
        back = read_predictions(path)
        assert [(r.path, r.face, r.status, r.reason) for r in back] == [
            (r.path, r.face, r.status, r.reason) for r in rows
        ]
        assert back[0].probabilities == pytest.approx(rows[0].probabilities, abs=1e-6)
        assert back[0].valence == pytest.approx(rows[0].valence, abs=1e-6)


def test_parse_expression():
    assert parse_expression("3") == 3
    assert parse_expression(" Happy ") == 1
    assert parse_expression("happiness") == 1
    assert parse_expression("CONTEMPT") == 7
    assert parse_expression("9") is None  # AffectNet's "uncertain"
    assert parse_expression("") is None
    with pytest.raises(ValueError, match="unknown expression"):
        parse_expression("bored")
    with pytest.raises(ValueError, match="class index"):
        parse_expression("1.5")


def probs_for(cls):
    p = [0.02] * 8
    p[cls] = 1 - 0.02 * 7
    return tuple(p)


@pytest.fixture
def labelled(tmp_path):
    """Predictions for 5 photos (one failed) and labels for 6 (one never predicted)."""
    pred_va = {"a": (0.5, 0.2), "b": (-0.2, 0.4), "c": (0.1, -0.3), "d": (0.6, 0.1)}
    pred_cls = {"a": 1, "b": 2, "c": 0, "d": 1}
    rows = [
        PredictionRow(f"/data/imgs/{k}/{n}.jpg", 0, DONE, "", probs_for(pred_cls[n]), *pred_va[n])
        for k, n in ((0, "a"), (0, "b"), (1, "c"), (1, "d"))
    ]
    rows.append(PredictionRow("/data/imgs/1/e.jpg", None, NO_FACE, "no face found"))
    with_va = tmp_path / "emoca.csv"
    write_predictions(rows, with_va)
    no_va = tmp_path / "fer.json"
    without_va = [PredictionRow(r.path, r.face, r.status, r.reason, r.probabilities) for r in rows]
    write_predictions(without_va, no_va)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,expression,valence,arousal\n"
        "0/a.jpg,happy,0.6,0.1\n"
        "0/b.jpg,Sadness,-0.4,0.5\n"
        "1/c.jpg,3,0.0,-0.2\n"
        "1/d.jpg,9,-2,-2\n"  # AffectNet "uncertain": in neither E-ACC nor V/A
        "1/e.jpg,0,0.1,0.1\n"  # no prediction (no face)
        "2/f.jpg,1,,\n"  # never predicted
    )
    expected = emotion_metrics(
        np.array([pred_va[n] for n in "abc"]),
        np.array([(0.6, 0.1), (-0.4, 0.5), (0.0, -0.2)]),
        np.array([1, 2, 0]),
        np.array([1, 2, 3]),
    )
    return with_va, no_va, labels, expected


def test_evaluate_joins_on_path_suffix(labelled):
    with_va, _, labels, expected = labelled
    ev = evaluate_predictions(read_predictions(with_va), read_labels(labels))
    assert ev.metrics == pytest.approx(expected)
    assert ev.metrics["e_acc"] == pytest.approx(2 / 3)
    assert (ev.n_labels, ev.n_expression, ev.n_affect) == (6, 3, 3)
    assert ev.unmatched == ["1/e.jpg", "2/f.jpg"]


def test_cli_evaluate(labelled, tmp_path, capsys):
    with_va, no_va, labels, expected = labelled
    out = tmp_path / "metrics.json"
    args = ["--predictions", str(with_va), "--predictions", str(no_va), "--labels", str(labels)]
    code = main(["emotion", "evaluate", *args, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # two labelled images without a prediction
    table = format_table({"emoca": expected, "fer": {"e_acc": expected["e_acc"]}})
    assert captured.out.startswith(table + "\n")
    assert "emoca: 6 labels, 3 faces in E-ACC, 3 in V/A, 2 without a prediction" in captured.out
    assert "no prediction: 2/f.jpg" in captured.err
    payload = json.loads(out.read_text())
    assert payload["columns"][0] == "V-PCC"
    assert payload["rows"]["emoca"]["metrics"] == pytest.approx(expected)
    assert payload["rows"]["fer"]["metrics"] == pytest.approx({"e_acc": 2 / 3})
    assert payload["table"] == table


def test_cli_evaluate_usage_errors(labelled, tmp_path, capsys):
    with_va, _, labels, _ = labelled
    other = tmp_path / "other.csv"
    other.write_text("path,expression\nzzz/q.jpg,1\n")
    assert main(["emotion", "evaluate", "--predictions", str(with_va), "--labels", str(other)]) == 2
    assert "no labelled image" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("path,expression\na.jpg,bored\n")
    assert main(["emotion", "evaluate", "--predictions", str(with_va), "--labels", str(bad)]) == 2
    assert "row 2: ValueError: unknown expression 'bored'" in capsys.readouterr().err
    assert main(["emotion", "evaluate", "--predictions", str(labels), "--labels", str(labels)]) == 2
    assert "not an emorig prediction file" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("emorig.emotion.recognizers") is None,
    reason="the recogniser module has not landed yet",
)
def test_cli_predict_with_fer(photos, tmp_path, capsys):
    from emorig.emotion.recognizers import load_recognizer
    from emorig.errors import EmorigError

    try:
        load_recognizer("fer")
    except (EmorigError, ImportError) as err:
        pytest.skip(f"FER recogniser unavailable here: {err}")
    out = tmp_path / "fer.csv"
    photo = photos / "astronaut.png"
    assert main(["emotion", "predict", str(photo), "--recognizer", "fer", "--out", str(out)]) == 0
    header, row = read_csv(out)
    record = dict(zip(header, row, strict=True))
    probs = [float(record[c]) for c in EMOTION_CLASSES]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert record["status"] == DONE
