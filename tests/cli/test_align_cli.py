import json

import numpy as np
import pytest
from PIL import Image

from emorig.cli.main import main

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture
def photo_folder(tmp_path):
    a = skimage_data.astronaut()
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(a).save(src / "astronaut.png")
    Image.fromarray(a).convert("L").save(src / "sub" / "grey.jpg")
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(src / "wall.png")
    (src / "notes.txt").write_text("not a photo")
    half = np.asarray(Image.fromarray(a).resize((384, 384)))
    canvas = np.full((512, 900, 3), 200, np.uint8)
    canvas[:, :512] = a
    canvas[64:448, 512:896] = half
    Image.fromarray(canvas).save(src / "two.png")
    return src


def test_align_a_folder(photo_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["align", str(photo_folder), str(out), "--size", "128", "--preview"])
    captured = capsys.readouterr()
    assert code == 1  # one photo without a face, one non-image
    assert "5 files, 3 aligned faces: 2 done, 1 several faces, 1 no face, 1 unreadable" in (
        captured.out
    )
    assert "no face: " in captured.err
    assert "wall.png: no face found" in captured.err
    assert "unreadable: " in captured.err
    assert "notes.txt: not an image" in captured.err
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "astronaut.json",
        "astronaut.png",
        "astronaut.preview.png",
        "sub/grey.json",
        "sub/grey.png",
        "sub/grey.preview.png",
        "two.json",
        "two.png",
        "two.preview.png",
    ]
    meta = json.loads((out / "astronaut.json").read_text())
    assert meta["size"] == 128
    assert meta["mode"] == "ffhq"
    assert len(meta["landmarks"]) == 68
    assert len(meta["source_landmarks"]) == 68
    m = np.array(meta["transform"])
    src = np.array(meta["source_landmarks"])
    mapped = np.c_[src, np.ones(68)] @ m.T
    assert np.allclose(mapped[:, :2], meta["landmarks"], atol=1e-2)
    assert Image.open(out / "astronaut.png").size == (128, 128)


def test_all_faces_and_deca_mode(photo_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "align",
            str(photo_folder / "two.png"),
            str(out),
            "--mode",
            "deca",
            "--size",
            "224",
            "--all-faces",
        ]
    )
    assert code == 0
    assert "1 files, 2 aligned faces" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "two_0.json",
        "two_0.png",
        "two_1.json",
        "two_1.png",
    ]
    assert Image.open(out / "two_1.png").size == (224, 224)


def test_dense_landmarks_on_request(photo_folder, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    out = tmp_path / "out"
    assert (
        main(["align", str(photo_folder / "astronaut.png"), str(out), "--dense", "mediapipe"]) == 0
    )
    meta = json.loads((out / "astronaut.json").read_text())
    assert len(meta["dense_landmarks"]) == 478


def test_usage_errors(tmp_path, capsys):
    assert main(["align", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse refuses the size before the library
        main(["align", str(tmp_path), str(tmp_path / "out"), "--mode", "ffhq", "--size", "8"])
    assert exit_.value.code == 2
    assert "argument --size: 8: choose an image size in pixels from 16 to 4096" in (
        capsys.readouterr().err
    )


def test_detector_choice_is_recorded_and_summarised(photo_folder, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    for detector in ("dlib", "mediapipe", "both"):
        out = tmp_path / detector
        photo = str(photo_folder / "astronaut.png")
        code = main(["align", photo, str(out), "--detector", detector])
        assert code == 0
        meta = json.loads((out / "astronaut.json").read_text())
        expected = "mediapipe" if detector == "mediapipe" else "dlib"
        assert meta["detector"] == expected
        assert meta["landmarker"] in ("dlib-68", "mediapipe-mesh-68")
        assert f"found by {expected} 1" in capsys.readouterr().out


def test_one_line_for_each_bad_case(photo_folder, tmp_path, capsys):
    a = skimage_data.astronaut()
    Image.fromarray(a).resize((160, 160)).save(photo_folder / "small.png")
    code = main(["align", str(photo_folder), str(tmp_path / "out"), "--size", "256"])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    assert any("wall.png: no face found" in line for line in lines)
    assert any("notes.txt: not an image" in line for line in lines)
    (several,) = [line for line in lines if "two.png" in line]
    assert several.startswith("note: ")
    assert "2 faces: kept the largest" in several
    assert "--all-faces keeps each" in several
    (small,) = [line for line in lines if "small.png" in line]
    assert small.startswith("note: ")
    assert "small face" in small
    assert "results will be blurry" in small


def test_an_unknown_detector_is_one_line(photo_folder, tmp_path, capsys):
    code = main(["align", str(photo_folder), str(tmp_path / "out"), "--detector", "opencv"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "unknown face detector 'opencv'; available: auto, both, dlib, mediapipe" in err
