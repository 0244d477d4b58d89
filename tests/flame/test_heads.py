"""load_head on official-layout files: the built-in head written as FLAME 2020 files must
render exactly like the built-in head itself, and missing files give one clear error."""

import numpy as np
import pytest
import torch

from emorig.errors import AssetError
from emorig.flame.builtin import builtin_head
from emorig.flame.heads import load_head
from emorig.io.obj import write_obj
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode
from fixtures_official import write_flame2020_pkl, write_landmark_embedding_npy


def write_official_copy(head, folder):
    """The built-in head in the official files' layouts and names."""
    f = head.flame
    v = f.n_vertices
    kintree = np.array([f.parents, np.arange(5)], dtype=np.int64)
    kintree[0, 0] = 4294967295  # FLAME stores the root's parent as uint32 max
    write_flame2020_pkl(
        folder / "generic_model.pkl",
        arrays={
            "f": f.faces.astype(np.uint32),
            "v_template": f.v_template.astype(np.float64),
            "shapedirs": np.concatenate([f.shapedirs, f.exprdirs], 2).astype(np.float64),
            "posedirs": f.posedirs.astype(np.float64),
            "J_regressor": f.j_regressor.astype(np.float64),
            "weights": f.weights.astype(np.float64),
            "kintree_table": kintree,
            "J": (f.j_regressor @ f.v_template).astype(np.float64),
            "weights_prior": f.weights.astype(np.float64),
        },
    )
    lm = head.landmarks
    write_landmark_embedding_npy(
        folder / "landmark_embedding.npy",
        arrays={
            "static_lmk_faces_idx": lm.static_faces.astype(np.int64),
            "static_lmk_bary_coords": lm.static_bary.astype(np.float64),
            "dynamic_lmk_faces_idx": lm.dynamic_faces.astype(np.int64),
            "dynamic_lmk_bary_coords": lm.dynamic_bary.astype(np.float32),
            "full_lmk_faces_idx": lm.full_faces[None].astype(np.int64),
            "full_lmk_bary_coords": lm.full_bary[None].astype(np.float32),
        },
    )
    write_obj(folder / "data" / "head_template.obj", f.v_template, f.faces, uv=head.uv)
    # FLAME_texture.npz stores BGR in 0..255
    mean = head.albedo.mean[..., ::-1] * 255.0
    tex_dir = head.albedo.basis[:, :, ::-1, :] * 255.0
    with open(folder / "FLAME_texture.npz", "wb") as fh:
        np.savez(fh, mean=mean.astype(np.float32), tex_dir=tex_dir.astype(np.float32))
    assert v > 0


@pytest.fixture(scope="module")
def official_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    (folder / "data").mkdir()
    write_official_copy(builtin_head(), folder)
    return folder


def test_official_layout_renders_like_the_builtin(official_copy):
    ours = FaceRenderer(builtin_head())
    theirs_head = load_head("flame2020", official_copy, albedo="flame")
    assert theirs_head.flame.name == "FLAME 2020"
    assert theirs_head.notes["albedo"] == "FLAME"
    theirs = FaceRenderer(theirs_head)
    torch.manual_seed(0)
    code = FaceCode.neutral(2)
    code = code.replace(
        shape=torch.randn(2, 100) * 0.5,
        expression=torch.randn(2, 50) * 0.3,
        jaw_pose=torch.tensor([[0.15, 0.0, 0.0], [0.05, 0.0, 0.0]]),
        global_pose=torch.tensor([[0.0, 0.4, 0.0], [0.1, -0.3, 0.0]]),
        albedo=torch.randn(2, 50),
    )
    a, b = ours(code, 96), theirs(code, 96)
    for name in ("rendered", "normal", "albedo", "mask"):
        diff = (getattr(a.buffers, name) - getattr(b.buffers, name)).abs()
        assert diff.max() < 1e-4, name
    assert torch.allclose(a.landmarks, b.landmarks, atol=1e-6)


def test_without_albedo_space_renders_grey(official_copy, tmp_path):
    head = load_head("flame2020", official_copy, albedo="none")
    r = FaceRenderer(head)
    out = r(FaceCode.neutral(1, n_albedo=0), 64)
    m = out.buffers.mask[0, 0] > 0
    assert torch.allclose(out.buffers.albedo[0][:, m], torch.tensor(0.5))


def test_missing_files_name_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(AssetError, match=r"generic_model\.pkl.*flame\.is\.tue\.mpg\.de"):
        load_head("flame2020", tmp_path)
    write_flame2020_pkl(tmp_path / "generic_model.pkl")
    with pytest.raises(AssetError, match=r"head_template\.obj.*DECA"):
        load_head("flame2020", tmp_path)
    with pytest.raises(AssetError, match="no asset folder given"):
        load_head("flame2020", None) if not __import__("os").environ.get(
            "EMORIG_HOME"
        ) else pytest.skip("EMORIG_HOME is set")
    with pytest.raises(ValueError, match="unknown head"):
        load_head("flame2030", tmp_path)
