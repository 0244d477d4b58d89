"""emorig prepare as a library: photos -> aligned images, codes and buffers in shards."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from emorig.data.dataset import (
    MANIFEST_NAME,
    MEAN_SHAPE_NAME,
    BufferDataset,
    DatasetWriter,
    PreparedSettings,
    code_from_batch,
    read_header,
    shard_paths,
    write_manifest,
)
from emorig.data.prepare import (
    PrepareConfig,
    deca_crop,
    merge,
    prepare,
    prepare_worker,
    source_name,
)
from emorig.errors import EmorigError
from emorig.faces.pipeline import FaceAligner, image_files
from emorig.flame.builtin import EXPRESSION_COMPONENTS, builtin_head
from emorig.io.images import read_image, to_uint8
from emorig.reconstruct.fitting import initialise_pose
from emorig.reconstruct.pipeline import CROP, Reconstruction, Reconstructor
from emorig.render.conditions import render_conditions
from emorig.render.face import FaceRenderer
from emorig.render.showcase import parse_face_spec, specs_to_code
from emorig.synth.sampling import SynthConfig, backgrounds, synthetic_batch
from emorig.types import FaceCode

skimage_data = pytest.importorskip("skimage.data")


class OneProcess:
    """accelerate's PartialState as a single process sees it."""

    process_index, num_processes = 0, 1
    is_main_process = is_local_main_process = True

    def wait_for_everyone(self):
        pass


class QuickReconstructor(Reconstructor):
    """The fit reconstructor's closed-form start only (pose and camera from the landmarks) and
    a made-up identity per call: cheap, and it counts the faces it is asked for."""

    def __init__(self, head):
        super().__init__("fit", head, photometric=False)
        self.calls = 0

    def reconstruct_crops(self, faces):
        n = len(faces)
        self.calls += n
        lm = torch.stack([torch.as_tensor(f.landmarks, dtype=torch.float32) for f in faces])
        pose, camera, _ = initialise_pose(self.renderer.flame, lm / CROP * 2 - 1)
        g = torch.Generator().manual_seed(1000 + self.calls)
        shape = torch.zeros(n, 100)
        shape[:, :10] = torch.randn(n, 10, generator=g)
        code = FaceCode.neutral(n).replace(global_pose=pose, camera=camera, shape=shape)
        return [Reconstruction(f, code[i : i + 1], None, 0.0) for i, f in enumerate(faces)]


@pytest.fixture(scope="module")
def head():
    return builtin_head()


def head_photo(head, spec: str, seed: int, size: int = 320) -> np.ndarray:
    """A render of the built-in head composited on a smooth random backdrop."""
    r = FaceRenderer(head)
    names = [n for n, _ in EXPRESSION_COMPONENTS]
    code = specs_to_code([parse_face_spec(spec, names)], r, camera=(8.0, 0.0, 0.01))
    with torch.no_grad():
        out = r(code, size)
    bg = backgrounds(1, size, torch.Generator().manual_seed(seed), "cpu")
    m = out.buffers.mask
    return to_uint8((out.buffers.rendered * m + bg * (1 - m))[0])


@pytest.fixture(scope="module")
def photos(head, tmp_path_factory):
    """A real photo, a render of the head, an unreadable file and a picture without a face."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(head_photo(head, "smile=0.6+jaw=8+yaw=15", 1)).save(root / "head.png")
    (root / "broken.jpg").write_text("not a picture")
    ramp = np.linspace(0, 255, 200, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (200, 1))] * 3, -1)).save(root / "blank.png")
    return root


@pytest.fixture(scope="module")
def prepared(head, photos, tmp_path_factory):
    """The real thing once: dlib + FFHQ alignment + landmark fitting + rendering."""
    out = tmp_path_factory.mktemp("data")
    rec = Reconstructor("fit", head, photometric=False)
    files = image_files(photos)
    result = prepare(files, photos, out, rec, PrepareConfig(size=256), state=OneProcess())
    return out, result, rec


def test_manifest_and_shards_round_trip(prepared):
    out, result, rec = prepared
    data = json.loads((out / MANIFEST_NAME).read_text())
    assert data["count"] == 2 == result.manifest.count
    assert data["size"] == 256
    assert data["reconstructor"] == "fit"
    assert data["head"] == "builtin"
    assert data["buffers"] == {"rendered": 3, "normal": 3, "albedo": 3, "mask": 1}
    assert data["condition"] == ["rendered", "normal", "albedo"]
    assert [it["source"] for it in data["items"]] == ["astronaut.png", "head.png"]
    assert data["code_fields"]["shape"] == [100]
    assert data["code_fields"]["light"] == [9, 3]
    assert data["mean_shape"] is None
    shards = shard_paths(out)
    assert [p.name for p in shards] == ["shard-r000-00000.safetensors"]
    header = read_header(shards[0])
    assert header.shapes["image"] == (2, 3, 256, 256)
    assert header.shapes["crop_transform"] == (2, 3, 3)

    ds = BufferDataset(out)
    assert len(ds) == 2
    assert ds.condition_channels == 9
    item = ds[0]
    assert item["source"] == "astronaut.png"
    assert item["image"].shape == (3, 256, 256)
    assert item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) < 0.25
    assert 0.5 < float(item["image"].max()) <= 1.0
    assert item["condition"].shape == (9, 256, 256)
    assert set(item["code"]) == set(data["code_fields"])
    # the stored code re-renders the stored buffers (what editing relies on); float16
    # storage costs less than a tenth of an 8-bit step
    code = ds.code([0, 1])
    again = render_conditions(
        rec.renderer, code, torch.stack([ds.item(i, "crop_transform") for i in (0, 1)]), 256
    )
    stored = torch.stack([ds[i]["condition"] for i in (0, 1)])
    exact = torch.cat([again.rendered, again.normal, again.albedo], 1)
    assert float((stored - exact).abs().max()) < 1e-3
    # DataLoader batches, and the dataset survives pickling for worker processes
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["condition"].shape == (2, 9, 256, 256)
    assert code_from_batch(batch["code"]).batch_size == 2
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["image"], ds[1]["image"])


def test_buffers_land_on_the_face_and_are_zero_elsewhere(prepared):
    out, _, _ = prepared
    ds = BufferDataset(out)
    for i in range(len(ds)):
        item = ds[i]
        cond, mask = item["condition"], item["mask"][0]
        assert 0.2 < float(mask.mean()) < 0.8
        assert float(cond[:, mask == 0].abs().max()) == 0.0  # background is exactly zero
        rendered, normal, albedo = cond[0:3], cond[3:6], cond[6:9]
        assert float(rendered[:, mask > 0].mean()) > 0.2
        assert float(albedo[:, mask > 0].mean()) > 0.2
        assert float(normal.min()) >= -1.0
        assert float(normal.max()) <= 1.0
        assert float(normal[2][mask > 0].mean()) > 0.3  # facing the camera
        # the face lands on the photo: its eyes, nose and mouth (iBUG 36..67 in aligned
        # pixels) are covered
        lm = ds.item(i, "landmarks")[36:].round().long().clamp(0, 255)
        assert float(mask[lm[:, 1], lm[:, 0]].mean()) == 1.0


def test_bad_files_are_listed_not_fatal(prepared):
    out, result, _ = prepared
    skipped = dict(result.manifest.skipped)
    assert set(skipped) == {"broken.jpg", "blank.png"}
    assert skipped["broken.jpg"].startswith("unreadable")
    assert skipped["blank.png"] == "no face found"
    data = json.loads((out / MANIFEST_NAME).read_text())
    assert {s["source"] for s in data["skipped"]} == {"broken.jpg", "blank.png"}


@pytest.fixture(scope="module")
def album(head, tmp_path_factory):
    """Five renders of the head in different expressions and poses, and one broken file."""
    root = tmp_path_factory.mktemp("album")
    specs = ["smile=0.5", "jaw=10+yaw=-12", "frown=0.6+yaw=10", "sad=0.5+pitch=5", "blink=0.4"]
    for k, spec in enumerate(specs):
        Image.fromarray(head_photo(head, spec, k, size=256)).save(root / f"img{k}.png")
    (root / "img5.png").write_bytes(b"\x89PNG broken")
    return root


def test_resume_redoes_only_missing_work(head, album, tmp_path):
    files = image_files(album)
    config = PrepareConfig(size=128, shard_size=2, batch_size=1)
    rec = QuickReconstructor(head)
    first = prepare(files, album, tmp_path, rec, config, state=OneProcess())
    assert rec.calls == 5
    assert first.manifest.count == 5
    shards = shard_paths(tmp_path)
    assert len(shards) == 3  # items 0-1, 2-3, 4 and the broken file
    before = {it.source: it for it in first.manifest.items}

    # an interrupted run: no manifest, one shard lost, a temporary file left by kill -9
    (tmp_path / MANIFEST_NAME).unlink()
    lost = read_header(shards[1]).sources
    shards[1].unlink()
    (tmp_path / ".shard-r000-00003.safetensors.0badc0de.tmp").write_bytes(b"half")
    rec.calls = 0
    again = prepare(files, album, tmp_path, rec, config, state=OneProcess())
    assert rec.calls == len(lost) == 2
    assert again.report.already_done == 4
    assert again.report.prepared == 2
    assert again.manifest.count == 5
    assert {it.source for it in again.manifest.items} == set(before)
    assert [s for s, _ in again.manifest.skipped] == ["img5.png"]
    assert not list(tmp_path.glob(".*.tmp"))

    # other settings never mix into an existing folder (and leave its manifest alone)
    with pytest.raises(EmorigError, match="--size 128"):
        prepare(files, album, tmp_path, rec, PrepareConfig(size=96), state=OneProcess())
    assert (tmp_path / MANIFEST_NAME).exists()


def test_a_run_killed_inside_a_shard_keeps_the_complete_ones(head, album, tmp_path):
    class Killed(Exception):
        pass

    files = image_files(album)
    config = PrepareConfig(size=128, shard_size=2, batch_size=1)
    rec = QuickReconstructor(head)
    out = tmp_path / "killed"
    original = rec.reconstruct_crops

    def dies_on_the_fourth(faces):
        if rec.calls >= 3:
            raise Killed
        return original(faces)

    rec.reconstruct_crops = dies_on_the_fourth
    with pytest.raises(Killed):
        prepare_worker(files, album, out, rec, config)
    assert len(shard_paths(out)) == 1
    assert not (out / MANIFEST_NAME).exists()
    rec.reconstruct_crops = original
    rec.calls = 0
    done = prepare(files, album, out, rec, config, state=OneProcess())
    assert rec.calls == 3
    assert done.manifest.count == 5


def test_two_ranks_write_their_slices_and_merge(head, album, tmp_path):
    files = image_files(album)
    config = PrepareConfig(size=128, shard_size=8, batch_size=4)
    rec = QuickReconstructor(head)
    reports = [prepare_worker(files, album, tmp_path, rec, config, rank=r, world=2) for r in (0, 1)]
    assert [r.assigned for r in reports] == [3, 3]
    names = sorted(p.name for p in shard_paths(tmp_path))
    assert names == ["shard-r000-00000.safetensors", "shard-r001-00000.safetensors"]
    assert read_header(tmp_path / names[0]).sources == ["img0.png", "img2.png", "img4.png"]
    assert read_header(tmp_path / names[1]).sources == ["img1.png", "img3.png"]
    assert not (tmp_path / MANIFEST_NAME).exists()  # workers never write it
    manifest = write_manifest(tmp_path, expected=[source_name(f, album) for f in files])
    assert manifest.count == 5
    assert [s for s, _ in manifest.skipped] == ["img5.png"]
    ds = BufferDataset(tmp_path)
    assert sorted(ds[i]["source"] for i in range(len(ds))) == [f"img{k}.png" for k in range(5)]
    # a merge that misses inputs refuses to write an incomplete manifest
    with pytest.raises(EmorigError, match="not prepared yet"):
        write_manifest(tmp_path, expected=["img0.png", "elsewhere.png"])


def test_mean_shape_replaces_every_shape(head, album, tmp_path):
    files = image_files(album)
    rec = QuickReconstructor(head)
    config = PrepareConfig(size=128, shard_size=3, batch_size=2, mean_shape=True)
    result = prepare(files, album, tmp_path, rec, config, state=OneProcess())
    ds = BufferDataset(tmp_path)
    own = torch.stack([ds.item(i, "shape_fitted") for i in range(len(ds))])
    assert float(own.std(0).max()) > 0.1  # the identities differed
    mean = own.mean(0, keepdim=True)
    assert torch.allclose(ds.mean_shape, mean, atol=1e-6)
    assert torch.allclose(result.manifest.mean_shape, mean, atol=1e-6)
    assert (tmp_path / MEAN_SHAPE_NAME).exists()
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["mean_shape"]["shape"] == [1, 100]
    codes = ds.code(list(range(len(ds))))
    assert torch.allclose(codes.shape, mean.expand(len(ds), -1))
    crops = torch.stack([ds.item(i, "crop_transform") for i in range(len(ds))])
    expect = render_conditions(rec.renderer, codes, crops, 128)
    got = torch.stack([ds[i]["condition"][:3] for i in range(len(ds))])
    assert float((got - expect.rendered).abs().max()) < 2e-3

    # merging without the mean shape renders each image's own identity again
    manifest, again = merge(tmp_path, mean_shape=False, renderer=rec.renderer)
    assert again == 2
    assert manifest.mean_shape is None
    assert not (tmp_path / MEAN_SHAPE_NAME).exists()
    ds = BufferDataset(tmp_path)
    assert torch.allclose(ds.code(list(range(len(ds)))).shape, own)
    # and --merge alone keeps what the shards use
    manifest, again = merge(tmp_path)
    assert again == 0
    assert manifest.mean_shape is None


def test_writer_takes_synthetic_tensors(head, tmp_path):
    renderer = FaceRenderer(head)
    batch = synthetic_batch(
        renderer, 3, SynthConfig(image_size=64), torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        buffers = renderer(batch.code, 64).buffers
    settings = PreparedSettings(
        size=64,
        head="builtin",
        reconstructor="synthetic",
        buffer_dtype="float32",
        synthetic_head=True,
    )
    with DatasetWriter(tmp_path, settings, shard_size=2) as writer:
        writer.add(batch.images, batch.code, buffers)
    ds = BufferDataset(tmp_path)
    assert len(ds) == 3
    assert len(shard_paths(tmp_path)) == 2
    assert ds[2]["source"] == "shard-r000-00001.safetensors#0"
    img = ds[1]["image"]
    assert float((img - batch.images[1]).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.equal(ds[1]["condition"][:3], buffers.rendered[1])
    # the default crop transform frames the whole image: re-rendering reproduces it
    again = render_conditions(
        renderer,
        ds.code([0, 1, 2]),
        torch.stack([ds.item(i, "crop_transform") for i in range(3)]),
        64,
    )
    assert float((again.normal - buffers.normal).abs().max()) < 1e-4
    with pytest.raises(EmorigError, match="images must be"):
        DatasetWriter(tmp_path, settings).add(batch.images[:, :, :32], batch.code, buffers)


def test_a_failed_reconstruction_skips_only_that_photo(head, album, tmp_path):
    class Flaky(QuickReconstructor):
        def reconstruct_crops(self, faces):
            if any(abs(float(f.landmarks[:, 0].mean()) - self.bad) < 1e-6 for f in faces):
                raise RuntimeError("the solver diverged")
            return super().reconstruct_crops(faces)

    files = image_files(album)[:3]
    rec = Flaky(head)
    said = []
    # find img1's crop as the worker makes it, then fail on it
    face = FaceAligner(backend=rec.aligner.backend, size=128).align(read_image(files[1]).pixels)
    rec.bad = float(deca_crop(face[0][0]).landmarks[:, 0].mean())
    config = PrepareConfig(size=128, batch_size=3)
    report = prepare_worker(files, album, tmp_path, rec, config, say=said.append)
    assert report.prepared == 2
    assert report.skipped == (
        ("img1.png", "reconstruction failed (RuntimeError: the solver diverged)"),
    )
    assert said == ["skipped: img1.png: reconstruction failed (RuntimeError: the solver diverged)"]
    assert [it.source for it in write_manifest(tmp_path).items] == ["img0.png", "img2.png"]
