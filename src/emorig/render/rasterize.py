"""Triangle rasterization in pure PyTorch: a z-buffer with differentiable barycentrics.

Screen space is DECA's (see :mod:`emorig.geometry.camera`): NDC ``x`` right and ``y`` down in
``[-1, 1]`` across the image width and height, pixel ``i`` spans ``[i, i + 1)`` in continuous
pixel coordinates (``x_px = (x_ndc + 1) W / 2``) and is sampled at its centre ``i + 0.5``;
``z`` is a depth, smaller is nearer.

The rasterizer works in two passes:

1. Without autograd, every face is evaluated at the pixel centres of its clipped bounding box,
   rounded up to a power-of-two window ``2^ly x 2^lx`` so that faces of one window size are
   processed together with broadcasting (edge functions are separable in x and y, one
   full-size operation per edge). Centres passing the inclusive edge test are folded into the
   z-buffer with one ``scatter_reduce_(..., "amin")`` per group on an int64 key that packs the
   float32 depth (its bits made order-preserving) above the face index. An edge shared by two
   faces is evaluated with bit-identical arithmetic (same vertex order, exact sign flips), so a
   pixel centre on it is inside at least one of them: no cracks.
2. With autograd, the barycentrics and depth of the selected face are recomputed at every
   covered pixel from the screen vertices, so ``bary`` and ``zbuf`` are differentiable with
   respect to the vertices for a fixed pixel-to-face assignment. As in pytorch3d with
   ``blur_radius=0``, there is no gradient from the silhouette (coverage is piecewise constant).
"""

from __future__ import annotations

import torch
from torch import Tensor

from emorig.types import Fragments

__all__ = ["DEGENERATE_AREA", "rasterize"]

#: Faces whose doubled screen area in pixel units ``|2 A|`` is at most this are skipped.
DEGENERATE_AREA = 1e-8

# Window pixels evaluated per pass (about 30 bytes each): bounds the temporary memory. A face
# whose window alone is larger is still evaluated in one pass.
_DEFAULT_CHUNK = 1 << 21
# Window groups: labels ly * 32 + lx; the fixed cost of a group, in window pixels.
_LABELS = 32 * 32
_GROUP_OVERHEAD = 1 << 16
_NO_FRAGMENT = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


def _image_size(image_size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or not all(isinstance(s, int) and s > 0 for s in image_size):
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _check_inputs(screen_vertices: Tensor, faces: Tensor) -> None:
    if screen_vertices.dim() != 3 or screen_vertices.shape[-1] != 3:
        raise ValueError(f"screen_vertices must be (B, V, 3), got {tuple(screen_vertices.shape)}")
    if not screen_vertices.is_floating_point():
        raise ValueError(f"screen_vertices must be floating point, got {screen_vertices.dtype}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor, got {faces.dtype}")
    if faces.device != screen_vertices.device:
        raise ValueError(f"faces on {faces.device} but screen_vertices on {screen_vertices.device}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= screen_vertices.shape[1]):
        raise ValueError(
            f"faces index vertices outside [0, {screen_vertices.shape[1]}): "
            f"min {int(faces.min())}, max {int(faces.max())}"
        )


def _orderable_bits(depth: Tensor) -> Tensor:
    """float32 -> int64 whose order is the float order (finite values and infinities)."""
    bits = (depth.to(torch.float32) + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(torch.int64)


def _face_setup(
    px: Tensor,
    py: Tensor,
    pz: Tensor,
    faces: Tensor,
    size: tuple[int, int],
    perspective_correct: bool,
    cull_backfaces: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-face edge equations, depth weights and clipped pixel bounding boxes.

    Args:
        px, py, pz: (B, V) continuous pixel coordinates and depth of the vertices.
        faces: (F, 3) int64.

    Returns:
        For the B F faces flattened: validity mask, the (B F, 5, 3) table whose rows are
        ``ax, ay, dx, dy, w`` for the three edges (edge ``k`` is ``e_k(p) = dx (p_y - ay) -
        dy (p_x - ax)``, positive inside, and the depth is ``sum_k w_k e_k``), first pixel
        column and row, and bounding-box width and height in pixels.
    """
    h, w = size
    b, n_faces = px.shape[0], faces.shape[0]
    flat = torch.stack([px, py, pz], -1).flatten(0, 1)  # (B V, 3)
    rows = faces.flatten()[None] + px.shape[1] * torch.arange(b, device=px.device)[:, None]
    tri = flat.index_select(0, rows.flatten()).view(b, n_faces, 3, 3)  # (B, F, corner, xyz)
    tx, ty, tz = tri.unbind(-1)
    area = (tx[..., 1] - tx[..., 0]) * (ty[..., 2] - ty[..., 0]) - (ty[..., 1] - ty[..., 0]) * (
        tx[..., 2] - tx[..., 0]
    )  # 2 A, negative when the screen normal points to the viewer (-z)

    # Edge k joins the two corners other than k, always from the lower vertex index to the
    # higher, so that the faces sharing it evaluate it with identical arithmetic; the sign that
    # restores the face's own winding (inside positive) is folded into (dx, dy), exactly.
    i = faces[:, [1, 2, 0]]
    j = faces[:, [2, 0, 1]]
    swap = i > j  # (F, 3)
    corner_i = torch.tensor([1, 2, 0], device=px.device).expand_as(swap)
    corner_j = torch.tensor([2, 0, 1], device=px.device).expand_as(swap)
    first = torch.where(swap, corner_j, corner_i).expand(b, -1, -1)[..., None].expand(-1, -1, -1, 2)
    second = (
        torch.where(swap, corner_i, corner_j).expand(b, -1, -1)[..., None].expand(-1, -1, -1, 2)
    )
    xy = tri[..., :2]
    start = xy.gather(2, first)  # (B, F, 3 edges, 2)
    orientation = torch.where(area < 0, -1.0, 1.0).to(px.dtype)
    sign = torch.where(swap, -1.0, 1.0).to(px.dtype) * orientation[..., None]
    inv_abs_area = 1.0 / area.abs().clamp_min(DEGENERATE_AREA)
    table = px.new_empty(b, n_faces, 5, 3)  # rows ax, ay, dx, dy, depth weight; column = edge
    table[:, :, :2] = start.transpose(-1, -2)
    torch.mul(
        (xy.gather(2, second) - start).transpose(-1, -2), sign[:, :, None], out=table[:, :, 2:4]
    )
    if perspective_correct:
        torch.div(inv_abs_area[..., None], tz, out=table[:, :, 4])  # screen-linear 1 / z
    else:
        torch.mul(inv_abs_area[..., None], tz, out=table[:, :, 4])

    # Pixel centres c + 0.5 inside [min, max] of the face: c in [ceil(min - .5), floor(max - .5)].
    limit_x, limit_y = float(w + 1), float(h + 1)
    x0 = torch.ceil(tx.amin(-1).clamp(-1.0, limit_x) - 0.5).long().clamp_min(0)
    x1 = torch.floor(tx.amax(-1).clamp(-1.0, limit_x) - 0.5).long().clamp_max(w - 1)
    y0 = torch.ceil(ty.amin(-1).clamp(-1.0, limit_y) - 0.5).long().clamp_min(0)
    y1 = torch.floor(ty.amax(-1).clamp(-1.0, limit_y) - 0.5).long().clamp_max(h - 1)
    nx = (x1 - x0 + 1).clamp_min(0)
    ny = (y1 - y0 + 1).clamp_min(0)

    finite = torch.isfinite(flat).all(-1).view(b, -1)  # (B, V)
    finite = finite.gather(1, faces.flatten()[None].expand(b, -1)).view(b, n_faces, 3).all(-1)
    valid = finite & (area.abs() > DEGENERATE_AREA) & (nx > 0) & (ny > 0)
    if cull_backfaces:
        valid &= area < 0
    if perspective_correct:
        valid &= (tz > 0).all(-1)
    return (*(t.flatten(0, 1) for t in (valid, table, x0, y0, nx, ny)),)


def _group_windows(labels: Tensor, overhead: int) -> Tensor:
    """Merge small window groups while that is cheaper; returns a label -> label table.

    A group is the set of faces evaluated on one ``2^ly x 2^lx`` window (label
    ``ly * 32 + lx``). Every group costs a fixed number of tensor operations, worth about
    ``overhead`` window pixels. Starting from the smallest, a group is merged into the group
    whose union window (the larger size in each direction) adds the fewest window pixels,
    provided that adds fewer than ``overhead``.
    """
    counts = torch.bincount(labels, minlength=_LABELS).tolist()
    # group label -> [ly, lx, face count, member labels]
    groups = {k: [k // 32, k % 32, c, [k]] for k, c in enumerate(counts) if c}
    done: set[int] = set()
    while len(groups) - len(done) > 0 and len(groups) > 1:
        small = min(
            (k for k in groups if k not in done), key=lambda k: groups[k][2] << sum(groups[k][:2])
        )
        sy, sx, sc, _ = groups[small]
        best, best_cost = -1, overhead
        for k, (gy, gx, gc, _) in groups.items():
            if k != small:
                uy, ux = max(sy, gy), max(sx, gx)
                cost = sc * ((1 << (uy + ux)) - (1 << (sy + sx))) + gc * (
                    (1 << (uy + ux)) - (1 << (gy + gx))
                )
                if cost < best_cost:
                    best, best_cost = k, cost
        if best < 0:
            done.add(small)
            continue
        gy, gx, gc, members = groups.pop(best)
        members = members + groups.pop(small)[3]
        key = max(sy, gy) * 32 + max(sx, gx)
        if key in groups:  # the union window already has a group: join it
            _, _, other_count, other = groups.pop(key)
            gc, members = gc + other_count, members + other
        done.discard(key)
        done.discard(best)
        groups[key] = [key // 32, key % 32, gc + sc, members]
    lut = list(range(_LABELS))
    for key, group in groups.items():
        for m in group[3]:
            lut[m] = key
    return torch.tensor(lut, device=labels.device)


def _resolve_group(
    keys: Tensor,
    table: Tensor,
    face_id: Tensor,
    origin: Tensor,
    x0: Tensor,
    y0: Tensor,
    nx: Tensor,
    ny: Tensor,
    log_window: tuple[int, int],
    width: int,
    perspective_correct: bool,
) -> None:
    """Fold the fragments of faces whose bounding boxes fit a ``2^ly x 2^lx`` window into keys.

    Every face is evaluated on a KY x KX grid of pixel centres anchored at its bounding box;
    edge functions are separable, so each costs one full-size operation. Grid columns and rows
    beyond the clipped bounding box get NaN centres, which fail the inside test.

    Args:
        keys: (B H W,) int64 z-buffer keys, updated in place.
        table: (n, 5, 3) edge equations and depth weights (see :func:`_face_setup`).
        face_id: (n,) face index within the mesh; origin: (n,) flat index of the top-left
            pixel of the bounding box; x0, y0, nx, ny: (n,) bounding boxes.
        log_window: ``(log2 KY, log2 KX)``.
    """
    ly, lx = log_window
    ky, kx = 1 << ly, 1 << lx
    dtype, device = table.dtype, keys.device
    steps_x = torch.arange(kx, device=device)
    steps_y = torch.arange(ky, device=device)
    nan = torch.tensor(float("nan"), dtype=dtype, device=device)
    cx = torch.where(steps_x < nx[:, None], (x0[:, None] + steps_x).to(dtype) + 0.5, nan)
    cy = torch.where(steps_y < ny[:, None], (y0[:, None] + steps_y).to(dtype) + 0.5, nan)
    ax, ay, dx, dy, weight = (t[..., None] for t in table.unbind(1))  # (n, 3, 1) each
    row_terms = dx * (cy[:, None] - ay)  # (n, 3, KY)
    col_terms = dy * (cx[:, None] - ax)  # (n, 3, KX)
    # e_k = row_k - col_k on (n, KY, KX): the only full-size operations; NaN stays outside.
    e_min = row_terms[:, 0, :, None] - col_terms[:, 0, None, :]
    for k in (1, 2):
        e_min = torch.minimum(e_min, row_terms[:, k, :, None] - col_terms[:, k, None, :])
    inside = e_min >= 0
    idx = inside.view(-1).nonzero().squeeze(1)  # flat (n, KY, KX), face-major
    if idx.numel() == 0:
        return
    rows = (weight * row_terms).sum(1)  # (n, KY)
    cols = (weight * col_terms).sum(1)  # (n, KX)
    depth = (rows[:, :, None] - cols[:, None]).view(-1).index_select(0, idx)  # sum_k w_k e_k
    if perspective_correct:
        depth = 1.0 / depth  # sum of b_k / z_k -> depth
    local = idx >> (ly + lx)
    offsets = (steps_y[:, None] * width + steps_x).view(-1)  # (KY KX) pixel offsets
    pixel = origin.index_select(0, local) + offsets.index_select(0, idx & (ky * kx - 1))
    key = (_orderable_bits(depth) << 32) | face_id.index_select(0, local)
    keys.scatter_reduce_(0, pixel, key, reduce="amin", include_self=True)


def _group_faces(kept: Tensor, nx: Tensor, ny: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort the kept faces by window size (bounding box rounded up to powers of two).

    Returns ``(kept, labels, sizes)``: the flat ``b * F + f`` indices in group order, and the
    ``ly * 32 + lx`` label and face count of each group, so that groups are slices.
    """
    lx, ly = (torch.ceil(torch.log2(n[kept].to(torch.float32))).long() for n in (nx, ny))
    lx += (1 << lx) < nx[kept]  # guard against log2 rounding
    ly += (1 << ly) < ny[kept]
    group = ly * 32 + lx
    group, order = torch.sort(_group_windows(group, _GROUP_OVERHEAD)[group])
    kept = kept[order]
    labels, sizes = torch.unique_consecutive(group, return_counts=True)
    return kept, labels, sizes


def _fill_keys(
    keys: Tensor,
    kept: Tensor,
    setup: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    n_faces: int,
    image_size: tuple[int, int],
    perspective_correct: bool,
    chunk_fragments: int,
) -> None:
    """Fold the fragments of the ``kept`` faces into the z-buffer ``keys``, group by group.

    Args:
        keys: (B H W,) int64 z-buffer keys, updated in place.
        kept: flat ``b * F + f`` indices of the faces to draw (non-empty).
        setup: ``(table, x0, y0, nx, ny)`` of every ``b * F + f`` (see :func:`_face_setup`).
        n_faces: F; image_size: ``(H, W)``.
    """
    h, w = image_size
    hw = h * w
    table, x0, y0, nx, ny = setup
    # Group faces by bounding-box size rounded up to powers of two (KY, KX) and
    # put every per-face array in group order, so that groups are slices.
    kept, labels, sizes = _group_faces(kept, nx, ny)
    table, x0, y0, nx, ny = (t.index_select(0, kept) for t in (table, x0, y0, nx, ny))
    face_id = kept % n_faces
    origin = torch.div(kept, n_faces, rounding_mode="floor") * hw + y0 * w + x0
    start = 0
    for label, size in zip(labels.tolist(), sizes.tolist(), strict=True):
        log_window = (label // 32, label % 32)
        step = max(1, chunk_fragments >> (log_window[0] + log_window[1]))
        for s in range(start, start + size, step):
            part = slice(s, min(s + step, start + size))
            _resolve_group(
                keys,
                table[part],
                face_id[part],
                origin[part],
                x0[part],
                y0[part],
                nx[part],
                ny[part],
                log_window,
                w,
                perspective_correct,
            )
        start += size


def _covered_pixels(
    keys: Tensor, faces: Tensor, n_vertices: int, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Decode the z-buffer: ``(covered, face, row, col, corner)`` of every covered pixel.

    ``covered`` is the flat ``b * H W + y W + x`` index, ``face`` the winning face, ``row`` and
    ``col`` the pixel and ``corner`` the (M 3,) rows of its face's vertices in the (B V) ones.
    """
    h, w = image_size
    hw = h * w
    covered = (keys != _NO_FRAGMENT).nonzero().squeeze(1)  # flat b * H W + y W + x
    face = keys[covered] & _LOW32
    batch = torch.div(covered, hw, rounding_mode="floor")
    pixel = covered - batch * hw
    row = torch.div(pixel, w, rounding_mode="floor")
    col = pixel - row * w
    corner = (batch[:, None] * n_vertices + faces[face]).flatten()  # rows of the (B V) vertices
    return covered, face, row, col, corner


def _barycentrics(
    screen_vertices: Tensor,
    corner: Tensor,
    row: Tensor,
    col: Tensor,
    image_size: tuple[int, int],
    perspective_correct: bool,
) -> tuple[Tensor, Tensor]:
    """Differentiable ``(bary (M, 3), depth (M,))`` of the pixel centres in the selected faces."""
    h, w = image_size
    b, v, _ = screen_vertices.shape
    dtype = screen_vertices.dtype
    flat = screen_vertices.reshape(b * v, 3)
    x, y, z = (flat[:, k].index_select(0, corner).view(-1, 3) for k in range(3))  # (M, 3)
    rx = (x + 1.0) * (w / 2.0) - (col.to(dtype) + 0.5)[:, None]  # vertex - pixel centre
    ry = (y + 1.0) * (h / 2.0) - (row.to(dtype) + 0.5)[:, None]
    rx0, rx1, rx2 = rx.unbind(1)
    ry0, ry1, ry2 = ry.unbind(1)
    # e_k = (v_{k+1} - p) x (v_{k+2} - p): twice the signed area of the sub-triangle opposite v_k.
    e = torch.stack([rx1 * ry2 - ry1 * rx2, rx2 * ry0 - ry2 * rx0, rx0 * ry1 - ry0 * rx1], 1)
    bary = e / e.sum(1, keepdim=True)
    if perspective_correct:
        weighted = bary / z
        total = weighted.sum(1, keepdim=True)
        bary = weighted / total
        depth = 1.0 / total.squeeze(1)
    else:
        depth = (bary * z).sum(1)
    return bary, depth


def _fragments(
    screen_vertices: Tensor,
    image_size: tuple[int, int],
    covered: Tensor,
    face: Tensor,
    bary: Tensor,
    depth: Tensor,
) -> Fragments:
    """Scatter the covered pixels' face, barycentrics and depth into full (B, H, W) images."""
    h, w = image_size
    b = screen_vertices.shape[0]
    hw = h * w
    pix_to_face = torch.full((b * hw,), -1, dtype=torch.int64, device=screen_vertices.device)
    pix_to_face[covered] = face
    bary_full = screen_vertices.new_zeros(b * hw, 3).index_copy_(0, covered, bary)
    zbuf = screen_vertices.new_full((b * hw,), float("inf")).index_copy_(0, covered, depth)
    return Fragments(
        pix_to_face=pix_to_face.view(b, h, w),
        bary=bary_full.view(b, h, w, 3),
        zbuf=zbuf.view(b, h, w),
    )


def rasterize(
    screen_vertices: Tensor,
    faces: Tensor,
    image_size: tuple[int, int] | int,
    *,
    perspective_correct: bool = False,
    cull_backfaces: bool = False,
    chunk_fragments: int = _DEFAULT_CHUNK,
) -> Fragments:
    """Rasterize a batch of triangle meshes sharing one topology: one face per pixel.

    A pixel is covered by a face when its centre passes the inclusive edge test (on an edge
    counts as inside, so a mesh has no cracks); the nearest covering face wins, ties in depth
    (at float32 precision) go to the lower face index. Faces with ``|2 A| <= DEGENERATE_AREA``
    pixels, non-finite vertices or no pixel centre in their bounding box are skipped.

    Args:
        screen_vertices: (B, V, 3) float, DECA screen space: NDC ``x`` right and ``y`` down in
            ``[-1, 1]`` (pixel centres at ``2 (i + 0.5) / W - 1``), ``z`` a depth where smaller
            is nearer (any sign unless ``perspective_correct``). Any device; float32 or float64
            (other float dtypes are rasterized in float32).
        faces: (F, 3) integer vertex indices, same device.
        image_size: ``(H, W)`` in pixels, or one int for a square image.
        perspective_correct: ``z`` is the camera depth of a perspective projection:
            barycentrics become ``b_i / z_i`` renormalised, the depth ``1 / sum(b_i / z_i)``,
            and a face with a vertex at ``z <= 0`` (behind the camera) is skipped.
        cull_backfaces: skip faces whose screen normal ``(v1 - v0) x (v2 - v0)`` points away
            from the viewer (``+z``). Off by default (DECA, pytorch3d): an open mouth shows its
            inner surfaces.
        chunk_fragments: window pixels (bounding boxes rounded up to powers of two) evaluated
            per pass; bounds the temporary memory (about 30 bytes each).

    Returns:
        :class:`~emorig.types.Fragments` with ``pix_to_face`` (B, H, W) int64 (``-1`` for
        background), ``bary`` (B, H, W, 3) and ``zbuf`` (B, H, W) in the dtype of
        ``screen_vertices`` (0 and ``inf`` on the background). ``bary`` and ``zbuf`` carry
        gradients to ``screen_vertices`` for the frozen pixel-to-face assignment (no
        silhouette gradients).

    Raises:
        ValueError: on wrong shapes, dtypes, devices, out-of-range face indices or image size.
    """
    _check_inputs(screen_vertices, faces)
    h, w = _image_size(image_size)
    if chunk_fragments < 1:
        raise ValueError(f"chunk_fragments must be positive, got {chunk_fragments}")
    faces = faces.long()
    b, v, _ = screen_vertices.shape
    f = faces.shape[0]
    device, dtype = screen_vertices.device, screen_vertices.dtype
    work_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32

    with torch.no_grad():
        sv = screen_vertices.detach().to(work_dtype)
        px = (sv[..., 0] + 1.0) * (w / 2.0)
        py = (sv[..., 1] + 1.0) * (h / 2.0)
        valid, table, x0, y0, nx, ny = _face_setup(
            px, py, sv[..., 2], faces, (h, w), perspective_correct, cull_backfaces
        )
        setup = (table, x0, y0, nx, ny)
        kept = valid.nonzero().squeeze(1)  # flat b * F + f
        keys = torch.full((b * h * w,), _NO_FRAGMENT, dtype=torch.int64, device=device)
        if kept.numel():
            _fill_keys(keys, kept, setup, f, (h, w), perspective_correct, chunk_fragments)
        covered, face, row, col, corner = _covered_pixels(keys, faces, v, (h, w))

    bary, depth = _barycentrics(screen_vertices, corner, row, col, (h, w), perspective_correct)
    return _fragments(screen_vertices, (h, w), covered, face, bary, depth)
