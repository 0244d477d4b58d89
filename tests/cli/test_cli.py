import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from emorig.cli.main import main
from emorig.io.flame_files import read_flame
from emorig.render.showcase import parse_face_spec
from fixtures_official import write_flame2020_pkl, write_landmark_embedding_npy


def test_entry_point_and_help(capsys):
    out = subprocess.run(
        [sys.executable, "-m", "emorig", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("emorig ")
    with pytest.raises(SystemExit) as exc:
        main(["render", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--face" in text
    assert "smile" in text


def test_assets_check_reports_present_missing_and_broken(tmp_path, capsys):
    write_flame2020_pkl(tmp_path / "generic_model.pkl")
    (tmp_path / "sub").mkdir()
    write_landmark_embedding_npy(tmp_path / "sub" / "landmark_embedding.npy")
    assert main(["assets", "check", "--assets", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ok      flame2020" in out
    assert "ok      landmark_embedding" in out
    assert "missing head_template" in out
    assert "github.com/yfeng95/DECA" in out
    (tmp_path / "FLAME_texture.npz").write_text("not a zip")
    assert main(["assets", "check", "--assets", str(tmp_path)]) == 1
    assert "BROKEN  flame_texture" in capsys.readouterr().out


def test_assets_check_without_a_folder_says_where_to_get_each_file(capsys, monkeypatch):
    monkeypatch.delenv("EMORIG_HOME", raising=False)
    assert main(["assets", "check"]) == 0
    captured = capsys.readouterr()
    assert "no asset folder given" in captured.err
    assert "generic_model.pkl: FLAME 2020" in captured.out
    assert "obtain it from https://flame.is.tue.mpg.de" in captured.out


def test_convert_flame_round_trip(tmp_path, capsys):
    write_flame2020_pkl(tmp_path / "generic_model.pkl")
    out = tmp_path / "flame2020.npz"
    assert main(["assets", "convert-flame", str(tmp_path / "generic_model.pkl"), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    a, b = read_flame(tmp_path / "generic_model.pkl"), read_flame(out)
    assert np.array_equal(a.shapedirs, b.shapedirs)
    assert np.array_equal(a.j_regressor, b.j_regressor)
    assert b.name == "FLAME 2020"


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["assets", "convert-flame", str(tmp_path / "nope.pkl"), str(tmp_path / "o.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("emorig: error: ")
    assert "nope.pkl" in err[0]
    assert main(["render", "--head", "flame2020", "--assets", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "generic_model.pkl" in err[-1]
    assert "flame.is.tue.mpg.de" in err[-1]
    assert main(["render", "--face", "smlie", "--out", str(tmp_path / "r")]) == 2
    assert "unknown term 'smlie'" in capsys.readouterr().err


def test_render_builtin_writes_every_buffer_and_a_sheet(tmp_path, capsys):
    buffers = "rendered,normal,albedo,shape,landmarks,mask,depth,uv"
    code = main(
        [
            "render",
            "--face",
            "neutral",
            "--face",
            "smile+jaw=10+yaw=20",
            "--size",
            "64",
            "--buffers",
            buffers,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "contact sheet" in capsys.readouterr().out
    pngs = sorted(p.name for p in tmp_path.glob("0*.png"))
    assert len(pngs) == 16
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size[0] > 8 * 64
    assert sheet.size[1] > 2 * 64
    rendered = np.asarray(Image.open(tmp_path / "01_smile_jaw_10_yaw_20_rendered.png"))
    assert rendered.shape == (64, 64, 3)
    assert 0.2 < (rendered.sum(-1) > 0).mean() < 0.9
    params = json.loads((tmp_path / "faces.json").read_text())
    assert params["synthetic"] is True
    assert params["faces"][1]["jaw"] == 10.0
    assert params["faces"][1]["expression"] == {"0": 1.0}


def test_face_spec_parsing():
    s = parse_face_spec("smile=0.5+exp7=-1+shape3+jaw=12+yaw=-5", ["smile", "frown"])
    assert s.expression == {0: 0.5, 7: -1.0}
    assert s.shape == {3: 1.0}
    assert (s.jaw, s.yaw) == (12.0, -5.0)
    assert parse_face_spec("neutral").expression == {}
    from emorig.errors import EmorigError

    with pytest.raises(EmorigError, match="not a number"):
        parse_face_spec("smile=abc", ["smile"])
    with pytest.raises(EmorigError, match="unknown term"):
        parse_face_spec("frwn", ["smile"])
