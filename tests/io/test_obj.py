"""OBJ reading and writing, including DECA's real head_template.obj."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emorig.errors import AssetError
from emorig.flame.data import UVLayout
from emorig.io.obj import FLAME_N_FACES, FLAME_N_VERTICES, read_obj, read_uv_layout, write_obj
from fixtures_official import write_head_template_obj

REAL_TEMPLATE = Path("/work/shared/upstream-data/deca/head_template.obj")


def _write(tmp_path: Path, text: str, name: str = "mesh.obj") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_head_template_layout(tmp_path):
    path = tmp_path / "head_template.obj"
    v, faces, uv, uv_faces = write_head_template_obj(path)
    verts, f, layout = read_obj(path)
    assert verts.dtype == np.float32
    assert f.dtype == np.int64
    np.testing.assert_array_equal(verts, v.astype(np.float32))
    np.testing.assert_array_equal(f, faces)
    assert layout is not None
    np.testing.assert_array_equal(layout.uv, uv.astype(np.float32))
    np.testing.assert_array_equal(layout.uv_faces, uv_faces)
    assert read_uv_layout(path).uv_faces.shape == (len(faces), 3)


def test_face_formats_negative_indices_and_quads(tmp_path):
    text = """# comment
mtllib x.mtl
o head
g group
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0 0.5 0.5 0.5
vn 0 0 1
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl skin
s 1
f 1/1 2/2 3/3
f 1/1/1 3/3/1 4/4/1
f -4/-4 -3/-3 -2/-2 -1/-1
"""
    v, f, uv = read_obj(_write(tmp_path, text))
    assert v.shape == (4, 3)
    assert f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 2, 3]]
    assert uv is not None
    assert uv.uv_faces.tolist() == f.tolist()


def test_faces_without_uv(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1\nf 1 3 4\n"
    _v, f, uv = read_obj(_write(tmp_path, text))
    assert uv is None
    assert f.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_pentagon_fan(tmp_path):
    text = "".join(f"v {i} 0 0\n" for i in range(5)) + "f 1 2 3 4 5\n"
    _, f, _ = read_obj(_write(tmp_path, text))
    assert f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4]]


def test_mixed_uv_faces_refused(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\nf 1/1 2/1 3/1\nf 1 2 3\n"
    with pytest.raises(AssetError, match="1 faces have texture indices and 1 do not"):
        read_obj(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 4\n", "faces index vertex 4 but the file has 3"),
        ("v 0 0 0\nf 1 -2 1\n", "line 2: vertex index -2 outside"),
        ("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 0\n", "line 4: vertex index 0"),
        ("v 0 0\n", "line 1: malformed 'v' statement"),
        ("v 0 0 x\n", "line 1: malformed 'v' statement"),
        ("v 0 0 0\nv 1 0 0\nf 1 2\n", "line 3: malformed 'f'"),
        ("v 0 0 0\nf a b c\n", "line 2: vertex index 'a' is not an integer"),
        ("# just a comment\n", "holds no vertices"),
    ],
)
def test_malformed(tmp_path, text, pattern):
    path = _write(tmp_path, text, "broken.obj")
    with pytest.raises(AssetError, match=pattern) as err:
        read_obj(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(AssetError, match=r"head_template\.obj: not found") as err:
        read_obj(tmp_path / "head_template.obj")
    assert "DECA" in str(err.value)


def test_uv_layout_requires_vt(tmp_path):
    path = _write(tmp_path, "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n")
    with pytest.raises(AssetError, match="no texture coordinates"):
        read_uv_layout(path)


def test_uv_layout_of_flame_sized_mesh_needs_flame_faces(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(FLAME_N_VERTICES, 3)).astype(np.float32)
    f = np.array([[0, 1, 2], [2, 3, 4]])
    layout = UVLayout(uv=np.zeros((3, 2), np.float32), uv_faces=np.array([[0, 1, 2]] * 2))
    path = tmp_path / "head_template.obj"
    write_obj(path, v, f, uv=layout)
    with pytest.raises(AssetError, match=f"{FLAME_N_VERTICES} vertices but 2 faces"):
        read_uv_layout(path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("with_uv", "with_normals"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_write_read_round_trip(tmp_path, dtype, with_uv, with_normals):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(7, 3)).astype(dtype)
    f = rng.integers(0, 7, size=(9, 3))
    layout = (
        UVLayout(
            uv=rng.random((11, 2)).astype(np.float32), uv_faces=rng.integers(0, 11, size=(9, 3))
        )
        if with_uv
        else None
    )
    normals = rng.normal(size=(7, 3)).astype(np.float32) if with_normals else None
    path = tmp_path / "out.obj"
    write_obj(path, v, f, uv=layout, normals=normals)
    text = path.read_text()
    assert ("vn " in text) == with_normals
    assert ("vt " in text) == with_uv
    v2, f2, uv2 = read_obj(path)
    np.testing.assert_array_equal(v2, v.astype(np.float32))
    np.testing.assert_array_equal(f2, f)
    if with_uv:
        assert uv2 is not None
        np.testing.assert_array_equal(uv2.uv, layout.uv)
        np.testing.assert_array_equal(uv2.uv_faces, layout.uv_faces)
    else:
        assert uv2 is None
    if dtype == np.float64:  # 17 significant digits: the text holds the exact doubles
        parsed = np.array(
            [
                [float(x) for x in line.split()[1:]]
                for line in text.splitlines()
                if line.startswith("v ")
            ]
        )
        np.testing.assert_array_equal(parsed, v)


def test_write_obj_is_atomic_on_error(tmp_path):
    path = tmp_path / "keep.obj"
    path.write_text("old")
    with pytest.raises(ValueError, match="faces have shape"):
        write_obj(path, np.zeros((3, 3)), np.zeros((2, 4), dtype=np.int64))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.obj"]


# ---------------------------------------------------------------------------------------------
# The real DECA template.


@pytest.fixture
def real_template() -> Path:
    if not REAL_TEMPLATE.is_file():
        pytest.skip("upstream DECA data not available")
    return REAL_TEMPLATE


@pytest.mark.needs_upstream_data
def test_real_head_template_counts(real_template):
    v, f, uv = read_obj(real_template)
    assert v.shape == (FLAME_N_VERTICES, 3)
    assert f.shape == (FLAME_N_FACES, 3)
    assert uv is not None
    assert uv.uv.shape == (5118, 2)
    assert uv.uv_faces.shape == (9976, 3)
    layout = read_uv_layout(real_template)
    assert layout.uv_faces.min() == 0
    assert layout.uv_faces.max() == 5117
    assert f.min() == 0
    assert f.max() == FLAME_N_VERTICES - 1


@pytest.mark.needs_upstream_data
def test_real_head_template_matches_its_text(real_template):
    """Byte-level check against an independent parse of the lines."""
    lines = real_template.read_bytes().decode("ascii").splitlines()
    v_ref = np.array(
        [[float(x) for x in ln.split()[1:4]] for ln in lines if ln.startswith("v ")],
        dtype=np.float32,
    )
    vt_ref = np.array(
        [[float(x) for x in ln.split()[1:3]] for ln in lines if ln.startswith("vt ")],
        dtype=np.float32,
    )
    corners = [[c.split("/") for c in ln.split()[1:]] for ln in lines if ln.startswith("f ")]
    assert all(len(face) == 3 for face in corners)  # the template is all triangles
    f_ref = np.array([[int(c[0]) - 1 for c in face] for face in corners])
    t_ref = np.array([[int(c[1]) - 1 for c in face] for face in corners])
    v, f, uv = read_obj(real_template)
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(f, f_ref)
    assert uv is not None
    np.testing.assert_array_equal(uv.uv, vt_ref)
    np.testing.assert_array_equal(uv.uv_faces, t_ref)
    assert f[0].tolist() == [3, 1, 0]
    assert uv.uv_faces[0].tolist() == [0, 1, 2]


@pytest.mark.needs_upstream_data
def test_real_head_template_round_trip(real_template, tmp_path):
    v, f, uv = read_obj(real_template)
    write_obj(tmp_path / "copy.obj", v, f, uv=uv)
    v2, f2, uv2 = read_obj(tmp_path / "copy.obj")
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(f2, f)
    assert uv2 is not None
    np.testing.assert_array_equal(uv2.uv, uv.uv)
    np.testing.assert_array_equal(uv2.uv_faces, uv.uv_faces)
