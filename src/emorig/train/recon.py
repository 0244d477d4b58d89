"""One training loop for every reconstruction stage; a stage is configuration, not a branch.

Stages (DECA, Feng et al. 2021, §4 and its ``trainer.py``; EMOCA, Daněček et al. 2022):

* ``synthetic``: supervised on renders of a FLAME-format head with known codes (how the
  built-in head gets an encoder); trains the coarse encoder.
* ``pretrain``: landmarks, eye closure, lip closure and coefficient priors; coarse encoder.
* ``coarse``: + masked photometric, identity (a pluggable face-recognition network) and shape
  consistency across the images of one identity; coarse encoder.
* ``detail``: coarse model frozen; detail encoder and decoder with UV-space photometric,
  ID-MRF (a user-supplied VGG19), symmetry, detail consistency and displacement priors.
* ``emoca``: DECA frozen; a new expression encoder with the emotion-consistency loss (a
  pluggable emotion network), relative eye/lip/mouth-corner losses and photometric.

Training uses Accelerate (1..N GPUs or nodes, or the CPU). Every batch is drawn from a
generator seeded by (seed, step, process), so resuming from a checkpoint continues exactly as
the uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.errors import EmorigError
from emorig.flame.data import HeadAssets
from emorig.geometry.mesh import vertex_normals
from emorig.io.atomic import atomic_write
from emorig.io.images import contact_sheet, save_png, to_uint8
from emorig.reconstruct import losses as L
from emorig.reconstruct.codes import code_to_vector, layout_slices
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.detail import DetailRenderer, sample_uv
from emorig.reconstruct.emoca import EmocaConfig, EmocaModel
from emorig.render.face import FaceRenderer
from emorig.render.shading import sh_shading
from emorig.synth.sampling import SynthConfig, synthetic_batch
from emorig.train.checkpoint import RunConfig, append_log, optimise, resume_run, save_checkpoint
from emorig.types import FaceCode

STAGES = ("synthetic", "pretrain", "coarse", "detail", "emoca")
TRAINABLE = {
    "synthetic": ("coarse_encoder",),
    "pretrain": ("coarse_encoder",),
    "coarse": ("coarse_encoder",),
    "detail": ("detail_encoder", "detail_decoder"),
    "emoca": ("expression_encoder",),
}
IMAGE_SIZE = 224


@dataclass(frozen=True)
class ReconTrainConfig(RunConfig):
    """Everything a reconstruction training run needs; saved in every checkpoint.

    Attributes:
        stage: one of :data:`STAGES`.
        out: run folder (checkpoints, ``losses.jsonl``, ``samples/``, final model).
        head: ``"builtin"`` or a FLAME release name (``load_head``).
        assets: asset folder for FLAME heads.
        init: model to start from: an emorig model folder, DECA's ``deca_model.tar`` or an
            EMOCA model folder; None starts from random weights.
        backbone, backbone_width: encoder trunk for new models (``resnet50``/``resnet18``).
        data: folder of DECA crops made by ``emorig align --mode deca --size 224`` (one
            sub-folder per identity); None renders synthetic faces of ``head``.
        steps, batch_size, group_size: optimisation steps, identities per batch and images
            per identity (DECA's K; > 1 enables shape/detail consistency).
        lr, grad_clip: Adam learning rate and gradient-norm clip.
        weights: ``"deca"`` or ``"emoca"`` default loss weights, then ``weight_overrides``.
        identity_net, emotion_net: networks mapping (B, 3, 224, 224) RGB in [0, 1] to (B, D)
            features (face recognition / emotion), as ``torch.export`` programs (``.pt2``) or
            TorchScript (:func:`emorig.io.networks.load_feature_network`); terms with no
            network are off and a non-zero weight without one is an error.
        vgg19: a torchvision ``vgg19`` state dict for ID-MRF (detail stage).
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (Accelerate).

    A checkpoint resumes when its settings equal these by value except ``out`` and
    ``steps``, the ``PATHS`` compared as content (``train.checkpoint.run_identity``).
    """

    #: Path-valued settings, compared resolved (a prepared ``data``: by its manifest).
    PATHS: ClassVar[tuple[str, ...]] = (
        "assets", "init", "data", "identity_net", "emotion_net", "vgg19",
    )  # fmt: skip

    stage: str
    out: str
    head: str = "builtin"
    assets: str | None = None
    init: str | None = None
    backbone: str = "resnet50"
    backbone_width: int = 64
    data: str | None = None
    steps: int = 1000
    batch_size: int = 8
    group_size: int = 1
    lr: float = 1e-4
    grad_clip: float = 1.0
    weights: str = "deca"
    weight_overrides: dict[str, float] = field(default_factory=dict)
    identity_net: str | None = None
    emotion_net: str | None = None
    vgg19: str | None = None
    save_every: int = 500
    log_every: int = 10
    sample_every: int = 500
    keep: int = 2
    mixed_precision: str = "no"
    seed: int = 0
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise EmorigError(f"unknown stage '{self.stage}'; choose {', '.join(STAGES)}")
        if self.weights not in ("deca", "emoca"):
            raise EmorigError(f"weights '{self.weights}': choose deca or emoca")
        if self.batch_size < 1 or self.group_size < 1 or self.steps < 1:
            raise EmorigError("steps, batch size and group size must be positive")
        if self.stage in ("detail", "emoca") and self.init is None:
            raise EmorigError(f"the {self.stage} stage fine-tunes a trained model: pass --init")

    def loss_weights(self) -> L.LossWeights:
        base = L.DECA_WEIGHTS if self.weights == "deca" else L.EMOCA_WEIGHTS
        try:
            return dataclasses.replace(base, **self.weight_overrides)
        except TypeError as err:
            raise EmorigError(
                f"unknown loss weight in {sorted(self.weight_overrides)}: {err}"
            ) from None


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ReconBatch:
    """Crops (B, 3, 224, 224) in [0, 1] with 68 target landmarks (B, 68, 2) in NDC, identity
    ids (B,) in consecutive groups of K, and the true codes when known (synthetic)."""

    images: Tensor
    landmarks: Tensor
    identity: Tensor
    truth: FaceCode | None = None


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


class SyntheticSource:
    """Random faces of ``renderer``'s head; with K > 1 each group shares identity and albedo."""

    def __init__(
        self,
        renderer: FaceRenderer,
        batch_size: int,
        group_size: int,
        seed: int,
        rank: int = 0,
        config: SynthConfig | None = None,
    ):
        self.renderer, self.batch_size, self.group_size = renderer, batch_size, group_size
        self.seed, self.rank = seed, rank
        self.config = config or SynthConfig(image_size=IMAGE_SIZE)

    def __call__(self, step: int) -> ReconBatch:
        g = _step_generator(self.seed, step, self.rank)
        n = self.batch_size * self.group_size
        if self.group_size == 1:
            b = synthetic_batch(self.renderer, n, self.config, g)
        else:
            from emorig.synth.sampling import frame_like_deca, sample_codes

            code = sample_codes(self.renderer, n, self.config, g)
            first = torch.arange(n) // self.group_size * self.group_size
            code = code.replace(shape=code.shape[first], albedo=code.albedo[first])
            code = frame_like_deca(self.renderer, code, self.config, g)
            b = _render_synthetic(self.renderer, code, self.config, g)
        ids = torch.arange(n) // self.group_size
        return ReconBatch(b.images, b.landmarks, ids, b.code)


def _render_synthetic(renderer, code, config, g):
    from emorig.synth.sampling import SyntheticBatch, backgrounds

    with torch.no_grad():
        out = renderer(code, config.image_size)
        bg = backgrounds(code.batch_size, config.image_size, g, out.buffers.mask.device)
        images = out.buffers.rendered * out.buffers.mask + bg * (1 - out.buffers.mask)
    return SyntheticBatch(images.clamp(0, 1), code, out.landmarks, out.buffers.mask)


class PreparedSource:
    """Faces with known codes from a prepared folder (``emorig synth --prepared``): each
    image's 224 crop through its stored crop transform, its true code and the code's
    projected landmarks. The synthetic stage learns on exactly the framing and resolution
    the folder has (e.g. the 64 px images a small diffusion model produces)."""

    def __init__(self, root, renderer: FaceRenderer, batch_size: int, seed: int, rank: int = 0):
        from emorig.data.dataset import BufferDataset

        data = BufferDataset(root, codes=True)
        if data.manifest.settings.reconstructor != "synthetic":
            raise EmorigError(
                f"{root}: the synthetic stage needs true codes (a folder from emorig synth "
                f"--prepared), not codes from {data.manifest.settings.reconstructor}"
            )
        n = len(data)
        self.images = torch.stack([data[i]["image"] for i in range(n)])
        self.crops = torch.stack([data[i]["crop_transform"] for i in range(n)])
        self.code = data.code(list(range(n)))
        self.renderer, self.batch_size, self.seed, self.rank = renderer, batch_size, seed, rank

    def __call__(self, step: int) -> ReconBatch:
        from emorig.emotion.crops import face_crops

        g = _step_generator(self.seed, step, self.rank)
        idx = torch.randint(0, self.images.shape[0], (self.batch_size,), generator=g)
        images = face_crops(self.images[idx], self.crops[idx], IMAGE_SIZE)
        code = self.code[idx]
        with torch.no_grad():
            device = self.renderer.flame.v_template.device
            _, landmarks = _projected_landmarks(self.renderer, code.to(device))
        # DECA's vector has no neck or eye rotation: the encoder learns the rest.
        code = code.replace(
            neck_pose=torch.zeros_like(code.neck_pose), eye_pose=torch.zeros_like(code.eye_pose)
        )
        return ReconBatch(images, landmarks.cpu(), idx, code)


class FolderSource:
    """DECA crops from ``emorig align --mode deca --size 224``: ``NAME.png`` + ``NAME.json``,
    one sub-folder per identity; each batch takes K images of B random identities."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        batch_size: int,
        group_size: int,
        seed: int,
        rank: int = 0,
    ):
        root = Path(root)
        groups: dict[str, list[Path]] = {}
        for meta in sorted(root.rglob("*.json")):
            png = meta.with_suffix(".png")
            if png.exists():
                groups.setdefault(str(meta.parent.relative_to(root)), []).append(meta)
        if not groups:
            raise EmorigError(
                f"{root}: no aligned crops (run 'emorig align --mode deca "
                "--size 224' on the photos first)"
            )
        self.identities = sorted(groups)
        self.groups = groups
        self.batch_size, self.group_size, self.seed, self.rank = batch_size, group_size, seed, rank

    def _load(self, meta: Path) -> tuple[Tensor, Tensor]:
        from PIL import Image

        info = json.loads(meta.read_text())
        size = info["size"]
        if size != IMAGE_SIZE or info.get("mode") != "deca":
            raise EmorigError(
                f"{meta}: a {info.get('mode')} crop of {size} px; the encoders "
                "take DECA crops of 224 px"
            )
        with Image.open(meta.with_suffix(".png")) as im:
            img = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
        lm = torch.tensor(info["landmarks"], dtype=torch.float32) / (size / 2) - 1.0
        return img.permute(2, 0, 1), lm

    def __call__(self, step: int) -> ReconBatch:
        rng = np.random.default_rng((self.seed * 1_000_003 + step) * 131 + self.rank)
        chosen = rng.choice(
            len(self.identities), self.batch_size, replace=len(self.identities) < self.batch_size
        )
        images, lms, ids = [], [], []
        for k, i in enumerate(chosen):
            files = self.groups[self.identities[i]]
            picks = rng.choice(len(files), self.group_size, replace=len(files) < self.group_size)
            for p in picks:
                img, lm = self._load(files[p])
                images.append(img)
                lms.append(lm)
                ids.append(k)
        return ReconBatch(torch.stack(images), torch.stack(lms), torch.tensor(ids))


# ---------------------------------------------------------------------------------------------
# Model and auxiliary networks


def build_model(cfg: ReconTrainConfig) -> DecaModel:
    """The model the stage trains, initialised as configured."""
    from emorig.reconstruct import checkpoints as ckpt

    model: DecaModel
    if cfg.init is None:
        model = DecaModel(DecaConfig(backbone=cfg.backbone, backbone_width=cfg.backbone_width))
        _camera_bias(model)
    else:
        path = Path(cfg.init)
        if path.is_dir() and (path / ckpt.CONFIG_NAME).exists():
            model = ckpt.from_pretrained(path)
        elif path.is_dir():
            model = ckpt.load_emoca(path)
        else:
            model = ckpt.load_deca(path)
    if cfg.stage == "emoca" and not isinstance(model, EmocaModel):
        base = model.config
        fields = {**dataclasses.asdict(base), "variant": "emoca"}
        emoca = EmocaModel(EmocaConfig(**fields, expression_backbone=base.backbone))
        emoca.load_state_dict(model.state_dict(), strict=False)
        emoca.clone_backbone_from_coarse()
        model = emoca
    return model


def _camera_bias(model: DecaModel) -> None:
    """Start a new coarse encoder at a typical camera (s = 10) instead of s = 0, where the
    projection is degenerate."""
    last = [m for m in model.coarse_encoder.modules() if isinstance(m, nn.Linear)][-1]
    cam = layout_slices(model.config.layout)["camera"]
    with torch.no_grad():
        last.bias[cam] = torch.tensor([10.0, 0.0, 0.0])


@dataclass
class Networks:
    """Frozen helper networks of the losses (None when not given)."""

    identity: nn.Module | None = None
    emotion: nn.Module | None = None
    idmrf: nn.Module | None = None


def build_networks(cfg: ReconTrainConfig, weights: L.LossWeights) -> Networks:
    from emorig.io.networks import load_feature_network

    nets = Networks(
        None
        if cfg.identity_net is None
        else load_feature_network(cfg.identity_net, "face-recognition"),
        None if cfg.emotion_net is None else load_feature_network(cfg.emotion_net, "emotion"),
    )
    if cfg.vgg19 is not None:
        from emorig.reconstruct.vgg import load_vgg19

        nets.idmrf = L.IDMRFLoss(load_vgg19(cfg.vgg19))
    needs = {
        "identity": (
            cfg.stage == "coarse" and weights.identity > 0,
            nets.identity,
            "--identity-net",
        ),
        "emotion": (cfg.stage == "emoca" and weights.emotion > 0, nets.emotion, "--emotion-net"),
        "ID-MRF": (cfg.stage == "detail" and weights.detail_mrf_total > 0, nets.idmrf, "--vgg19"),
    }
    for name, (needed, net, flag) in needs.items():
        if needed and net is None:
            raise EmorigError(
                f"the {cfg.stage} stage's {name} loss has a non-zero weight but no "
                f"network: pass {flag}, or set its weight to 0 with --weight"
            )
    return nets


# ---------------------------------------------------------------------------------------------
# Losses per stage


def _projected_landmarks(renderer: FaceRenderer, code: FaceCode):
    flame = renderer.geometry(code)
    return flame, renderer.project(flame.landmarks2d, code)[..., :2]


def synthetic_losses(model, renderer, batch: ReconBatch) -> dict[str, Tensor]:
    """Supervised: the predicted DECA vector against the true one (per group, scaled to
    comparable units) plus the projected landmarks."""
    pred = model.coarse_parameters(batch.images)
    layout = model.config.layout
    true = code_to_vector(batch.truth, layout).to(pred)
    s = layout_slices(layout)
    scale = {"shape": 1.0, "expression": 1.0, "pose": 10.0, "light": 0.1, "albedo": 0.1}
    out = {
        name: F.mse_loss(pred[:, s[name]] * k, true[:, s[name]] * k) for name, k in scale.items()
    }
    cam_p, cam_t = pred[:, s["camera"]], true[:, s["camera"]]
    out["camera"] = F.mse_loss(cam_p[:, 0] / cam_t[:, 0], torch.ones_like(cam_t[:, 0])) + (
        F.mse_loss(cam_p[:, 1:] * 10, cam_t[:, 1:] * 10)
    )
    code = _vector_code(model, pred)
    _, lm = _projected_landmarks(renderer, code)
    out["landmark"] = 10.0 * L.landmark_loss(lm, batch.landmarks)
    return out


def _vector_code(model, vector: Tensor) -> FaceCode:
    from emorig.reconstruct.codes import vector_to_code

    return vector_to_code(vector, None, model.config.layout)


def _face_eye_image_mask(out, face_eye: Tensor) -> Tensor:
    """DECA's photometric mask: the UV face/eye mask seen in the render."""
    return sample_uv(
        face_eye[None, None].to(out.buffers.mask).expand(out.buffers.mask.shape[0], -1, -1, -1),
        out.buffers.uv,
        out.buffers.mask,
    )


def coarse_losses(
    cfg: ReconTrainConfig,
    model,
    renderer: FaceRenderer,
    batch: ReconBatch,
    w: L.LossWeights,
    nets: Networks,
    face_eye: Tensor | None,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """DECA's pretrain and coarse stages (and EMOCA's stage with ``cfg.stage == "emoca"``)."""
    images, target = batch.images, batch.landmarks
    if cfg.stage == "emoca":
        with torch.no_grad():
            deca_code = DecaModel.encode(model, images)
        expression = model.expression_parameters(images)[:, : model.config.n_expression]
        code = deca_code.replace(expression=expression)
    else:
        code = _vector_code(model, model.coarse_parameters(images))
    k = cfg.group_size
    if cfg.stage == "coarse" and w.shape_consistency and k > 1:
        order = L.group_permutation(images.shape[0] // k, k, generator, images.device)
        # DECA's shape consistency: the batch twice, the second time with shapes swapped
        doubled = code.map(lambda t: torch.cat([t, t]))
        code = doubled.replace(shape=torch.cat([code.shape, code.shape[order]]))
        images, target = torch.cat([images, images]), torch.cat([target, target])
    out: dict[str, Tensor] = {}
    need_render = cfg.stage in ("coarse", "emoca")
    if need_render:
        render = renderer(code, IMAGE_SIZE)
        lm = render.landmarks
    else:
        _, lm = _projected_landmarks(renderer, code)
    if w.landmark and cfg.stage != "emoca":
        out["landmark"] = w.landmark * L.landmark_loss(lm, target)
    if w.eye_closure:
        out["eye_closure"] = w.eye_closure * L.eye_closure_loss(lm, target)
    if w.lip_closure:
        out["lip_closure"] = w.lip_closure * L.lip_closure_loss(lm, target)
    if w.mouth_corner and cfg.stage == "emoca":
        out["mouth_corner"] = w.mouth_corner * L.mouth_corner_loss(lm, target)
    if cfg.stage != "emoca":
        out["shape_reg"] = w.shape_reg * L.coefficient_regulariser(code.shape)
        out["albedo_reg"] = w.albedo_reg * L.coefficient_regulariser(code.albedo)
        out["light_reg"] = w.light_reg * L.light_regulariser(code.light)
    out["expression_reg"] = w.expression_reg * L.coefficient_regulariser(code.expression)
    if need_render:
        mask = render.buffers.mask
        if face_eye is not None:
            mask = _face_eye_image_mask(render, face_eye)
        rendered = render.buffers.rendered
        if w.photometric:
            out["photometric"] = w.photometric * L.photometric_loss(rendered * mask, images, mask)
        if cfg.stage == "coarse" and w.identity and nets.identity is not None:
            composite = rendered * mask + images * (1 - mask)
            out["identity"] = w.identity * L.identity_loss(
                nets.identity(composite), nets.identity(images)
            )
        if cfg.stage == "emoca" and w.emotion and nets.emotion is not None:
            out["emotion"] = w.emotion * L.emotion_consistency_loss(
                nets.emotion(rendered * mask), nets.emotion(images)
            )
    return out


def detail_losses(
    cfg: ReconTrainConfig,
    model: DecaModel,
    renderer: FaceRenderer,
    detail: DetailRenderer,
    batch: ReconBatch,
    w: L.LossWeights,
    nets: Networks,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """DECA's detail stage, in UV space (coarse model frozen)."""
    images = batch.images
    with torch.no_grad():
        code = _vector_code(model, model.coarse_parameters(images))
        flame = renderer.geometry(code)
        screen = renderer.project(flame.vertices, code)
        uv_v, uv_n = detail.uv_maps(flame.vertices)
        uv_screen = detail.uv_mapper(screen)
        screen_normals = vertex_normals(screen, detail.uv_mapper.faces)
        uv_screen_n = detail.uv_mapper(screen_normals)
        albedo = renderer.albedo_texture(code)
        if albedo.shape[-1] != detail.face_eye_mask.shape[-1]:
            albedo = F.interpolate(
                albedo, size=detail.face_eye_mask.shape[-2:], mode="bilinear", align_corners=False
            )
        grid = uv_screen[:, :2].permute(0, 2, 3, 1)
        target = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
        visible = (
            (uv_screen_n[:, 2:3] < -0.05).float() * detail.face_eye_mask * (detail.uv_mapper.mask)
        )
    detail_code = model.detail_encoder(images)
    k = cfg.group_size
    if w.detail_consistency and k > 1:
        order = L.group_permutation(images.shape[0] // k, k, generator, images.device)
        detail_code = torch.cat([detail_code, detail_code[order]])
        code = code.map(lambda t: torch.cat([t, t]))
        uv_v, uv_n, target, visible, albedo = (
            torch.cat([t, t]) for t in (uv_v, uv_n, target, visible, albedo)
        )
    uv_z = model.displacement(code.replace(detail=detail_code))
    from emorig.reconstruct.detail import displacement_to_normals

    normals = displacement_to_normals(
        uv_z, uv_v, uv_n, detail.face_eye_mask, detail.dense_faces, detail.fixed_displacement
    )
    shading = sh_shading(normals, code.light)
    texture = albedo * shading
    crop = L.crop_uv_face
    out = {
        "detail_photometric": w.detail_photometric
        * L.uv_photometric_loss(crop(texture), crop(target), crop(visible)),
        "detail_displacement": w.detail_displacement * L.displacement_regulariser(uv_z),
        "detail_shading_smooth": w.detail_shading_smooth * L.shading_smooth_loss(shading),
        "detail_symmetry": w.detail_symmetry * L.symmetry_loss(uv_z, visible),
    }
    if w.detail_mrf_total and nets.idmrf is not None:
        out["detail_mrf"] = w.detail_mrf_total * nets.idmrf(
            crop(texture * visible), crop(target * visible)
        )
    return out


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class TrainResult:
    step: int
    losses: dict[str, float]
    checkpoint: Path | None
    model_folder: Path | None
    seconds: float


@dataclass
class _ReconRun:
    """What the steps of a training run share."""

    accelerator: Any
    model: Any  # as prepared by Accelerate
    raw: DecaModel  # the unwrapped model
    optimizer: Any
    trainable: list[nn.Parameter]
    start: int
    renderer: FaceRenderer
    face_eye: Tensor | None
    detail: DetailRenderer | None
    source: Callable[[int], ReconBatch]


def _trainable_model(
    cfg: ReconTrainConfig, accelerator: Any
) -> tuple[DecaModel, list[nn.Parameter], torch.optim.Optimizer, int]:
    """The model with only the stage's parts trainable, their optimiser and the step to start
    from (resumed from the newest intact checkpoint of this run in ``cfg.out``)."""
    with torch.random.fork_rng(devices=[]):  # the run's seed, not the process's RNG state
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
    model.requires_grad_(False)
    trainable = [p for name in TRAINABLE[cfg.stage] for p in getattr(model, name).parameters()]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    start = 0
    rank, scaler = accelerator.process_index, accelerator.scaler
    state = resume_run(Path(cfg.out), cfg, model, optimizer, rank=rank, scaler=scaler)
    if state is not None:
        start = int(state["step"])
    model.train()
    for name in set(dict(model.named_children())) - set(TRAINABLE[cfg.stage]):
        getattr(model, name).eval()  # frozen parts keep their batch-norm statistics
    return model, trainable, optimizer, start


def _detail_renderer(
    head: HeadAssets, face_eye: Tensor | None, device: torch.device
) -> DetailRenderer:
    """The detail stage's UV-space renderer; needs the head's UV face/eye mask."""
    if face_eye is None:
        raise EmorigError(
            "the detail stage needs the head's UV face/eye mask "
            "(for FLAME: uv_face_eye_mask.png from DECA's data folder)"
        )
    fixed = None if head.fixed_displacement is None else torch.as_tensor(head.fixed_displacement)
    return DetailRenderer(
        torch.as_tensor(head.flame.faces),
        torch.as_tensor(head.uv.uv),
        torch.as_tensor(head.uv.uv_faces),
        face_eye.cpu(),
        fixed,
    ).to(device)


def _data_source(
    cfg: ReconTrainConfig, renderer: FaceRenderer, rank: int
) -> Callable[[int], ReconBatch]:
    """Batches by step: synthetic renders, a prepared folder or a folder of photos."""
    if cfg.data is None:
        return SyntheticSource(renderer, cfg.batch_size, cfg.group_size, cfg.seed, rank)
    prepared = (Path(cfg.data) / "manifest.json").is_file()
    if cfg.stage == "synthetic" and not prepared:
        raise EmorigError(
            "the synthetic stage renders its own data or reads a prepared folder with true "
            "codes (emorig synth --prepared); --data is neither"
        )
    if prepared:
        return PreparedSource(cfg.data, renderer, cfg.batch_size, cfg.seed, rank)
    return FolderSource(cfg.data, cfg.batch_size, cfg.group_size, cfg.seed, rank)


def _start_run(cfg: ReconTrainConfig, accelerator: Any, head: HeadAssets, nets: Networks):
    """Model, optimiser, renderers and data source of a run, on the accelerator's device."""
    model, trainable, optimizer, start = _trainable_model(cfg, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    device = accelerator.device
    renderer = FaceRenderer(head, n_albedo=raw.config.n_albedo).to(device)
    for p in renderer.parameters():
        p.requires_grad_(False)
    for net in (nets.identity, nets.emotion, nets.idmrf):
        if net is not None:
            net.to(device)
    face_eye = (
        None
        if head.uv_face_eye_mask is None
        else torch.as_tensor(head.uv_face_eye_mask, device=device)
    )
    detail = _detail_renderer(head, face_eye, device) if cfg.stage == "detail" else None
    source = _data_source(cfg, renderer, accelerator.process_index)
    return _ReconRun(
        accelerator, model, raw, optimizer, trainable, start, renderer, face_eye, detail, source
    )


def _train_step(
    cfg: ReconTrainConfig,
    run: _ReconRun,
    step: int,
    weights: L.LossWeights,
    nets: Networks,
) -> tuple[ReconBatch, dict[str, float]]:
    """One optimiser step of the stage's losses; the batch and the losses (floats)."""
    accelerator, raw, renderer = run.accelerator, run.raw, run.renderer
    device = accelerator.device
    batch = run.source(step)
    batch = ReconBatch(
        batch.images.to(device),
        batch.landmarks.to(device),
        batch.identity.to(device),
        None if batch.truth is None else batch.truth.to(device),
    )
    g = _step_generator(cfg.seed, step, accelerator.process_index + 7919)
    with accelerator.autocast():
        if cfg.stage == "synthetic":
            terms = synthetic_losses(raw, renderer, batch)
        elif cfg.stage == "detail":
            terms = detail_losses(cfg, raw, renderer, run.detail, batch, weights, nets, g)
        else:
            terms = coarse_losses(cfg, raw, renderer, batch, weights, nets, run.face_eye, g)
        loss = sum(terms.values())
    optimise(accelerator, run.optimizer, loss, step, run.trainable, cfg.grad_clip)
    return batch, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def _log_and_save(
    cfg: ReconTrainConfig,
    run: _ReconRun,
    done: int,
    end: int,
    batch: ReconBatch,
    last: dict[str, float],
    progress: Callable[[int, int, dict[str, float]], None] | None,
) -> Path | None:
    """Log the losses, report them, write samples and a checkpoint when due; the checkpoint
    written, if any."""
    out = Path(cfg.out)
    if done % cfg.log_every == 0 or done == end:
        append_log(out, {"step": done, **last})
    if progress is not None:
        progress(done, cfg.steps, last)
    if done % cfg.sample_every == 0 or done == cfg.steps:
        write_samples(run.raw, run.renderer, batch, out / "samples" / f"step-{done:08d}.png")
    if done % cfg.save_every == 0 or done == end:
        state = {"model": run.raw.state_dict(), "optimizer": run.optimizer.state_dict()}
        return save_checkpoint(out, done, state, cfg, keep=cfg.keep, scaler=run.accelerator.scaler)
    return None


def _save_model(cfg: ReconTrainConfig, raw: DecaModel, head: HeadAssets) -> Path:
    """``save_pretrained`` the trained model with its ``training.json`` in ``cfg.out/model``."""
    from emorig.reconstruct import checkpoints as ckpt

    out = Path(cfg.out)
    model_folder = out / "model"
    ckpt.save_pretrained(raw, model_folder)
    with atomic_write(out / "model" / "training.json", "w") as f:
        json.dump(
            {
                "head": head.flame.name,
                "synthetic_head": head.synthetic,
                "config": cfg.to_dict(),
                "steps": cfg.steps,
            },
            f,
            indent=1,
        )
    return model_folder


def train_reconstruction(
    cfg: ReconTrainConfig,
    head: HeadAssets | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Run (or resume) a training stage; returns the last step's losses.

    Resumes from the newest intact ``checkpoint-*.pt`` in ``cfg.out`` of the same run
    (settings equal except ``steps``, see :class:`ReconTrainConfig`), RNG states included.
    ``stop_after`` ends the process's work after that many steps (tests
    use it to simulate an interruption). Saves the final model with ``save_pretrained``.
    """
    from accelerate import Accelerator

    from emorig.flame.heads import load_head

    t0 = time.perf_counter()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)
    head = head if head is not None else load_head(cfg.head, cfg.assets)
    weights = cfg.loss_weights()
    nets = build_networks(cfg, weights)
    run = _start_run(cfg, accelerator, head, nets)
    last: dict[str, float] = {}
    checkpoint = None
    end = cfg.steps if stop_after is None else min(cfg.steps, run.start + stop_after)
    for step in range(run.start, end):
        batch, last = _train_step(cfg, run, step, weights, nets)
        if accelerator.is_main_process:
            saved = _log_and_save(cfg, run, step + 1, end, batch, last, progress)
            checkpoint = saved if saved is not None else checkpoint
        accelerator.wait_for_everyone()
    model_folder = None
    if accelerator.is_main_process and end == cfg.steps:
        model_folder = _save_model(cfg, run.raw, head)
    return TrainResult(end, last, checkpoint, model_folder, time.perf_counter() - t0)


@torch.no_grad()
def write_samples(
    model, renderer: FaceRenderer, batch: ReconBatch, path: Path, count: int = 4
) -> None:
    """Input | coarse render | shape image for the first ``count`` items."""
    was_training = model.training
    model.eval()
    images = batch.images[:count]
    code = _vector_code(model, model.coarse_parameters(images))
    render = renderer(code, IMAGE_SIZE)
    shape, _ = renderer.render_shape(code, IMAGE_SIZE)
    rows = []
    for i in range(images.shape[0]):
        m = render.buffers.mask[i]
        overlay = render.buffers.rendered[i] * m + images[i] * (1 - m)
        rows.append([to_uint8(images[i]), to_uint8(overlay), to_uint8(shape[i])])
    save_png(contact_sheet(rows, column_labels=["input", "render", "shape"]), path)
    model.train(was_training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "STAGES",
    "ReconBatch",
    "ReconTrainConfig",
    "TrainResult",
    "count_parameters",
    "train_reconstruction",
]
