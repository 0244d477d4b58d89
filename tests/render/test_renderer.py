"""MeshRenderer: DECA-style buffers and shape images on tiny generated meshes."""

from __future__ import annotations

import math

import pytest
import torch

from emorig.geometry import CropTransform, orthographic_project
from emorig.render import SH_CONSTANTS, MeshRenderer
from emorig.render.renderer import SHAPE_COLOR, SHAPE_LIGHT_INTENSITY


def quad(dtype=torch.float64):
    """A unit-square plane z = 0 facing +z (the camera), uv = ((x + 1) / 2, (y + 1) / 2)."""
    v = torch.tensor(
        [[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]], dtype=dtype
    )
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])  # counter-clockwise seen from +z
    uv = (v[:, :2] + 1) / 2
    return v, f, uv


def sphere(n=10, dtype=torch.float64):
    """A closed UV sphere (outward CCW faces) with per-vertex uv."""
    verts, uv = [], []
    for i in range(n + 1):
        theta = math.pi * i / n
        for j in range(n):
            phi = 2 * math.pi * j / n
            verts.append(
                [math.sin(theta) * math.sin(phi), math.cos(theta), math.sin(theta) * math.cos(phi)]
            )
            uv.append([j / n, 1 - i / n])
    faces = []
    for i in range(n):
        for j in range(n):
            a, b = i * n + j, i * n + (j + 1) % n
            c, d = a + n, b + n
            faces += [[a, c, b], [b, c, d]]
    return (torch.tensor(verts, dtype=dtype), torch.tensor(faces), torch.tensor(uv, dtype=dtype))


def dc_light(batch, value=1.0 / SH_CONSTANTS[0], dtype=torch.float64):
    light = torch.zeros(batch, 9, 3, dtype=dtype)
    light[:, 0] = value
    return light


def test_checker_texture_on_a_quad():
    v, f, uv = quad()
    renderer = MeshRenderer(f, uv, f)
    s = 32  # 4 x 4 blocks of 8 x 8 texels
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(4, 4, 3, generator=g, dtype=torch.float64)
    tex = colours.repeat_interleave(8, 0).repeat_interleave(8, 1).permute(2, 0, 1)[None]
    cam = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)  # quad on NDC [-0.5, 0.5]
    screen = orthographic_project(v[None], cam)
    out = renderer(v[None], screen, tex, dc_light(1), (32, 32))
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:24, 8:24] = True
    assert torch.equal(out.mask[0, 0] > 0, inside)
    checked = 0
    for y in range(8, 24):
        for x in range(8, 24):
            u = (x + 0.5 - 8) / 16  # pixel centre -> u; image rows go down, texture v up
            v_ = 1 - (y + 0.5 - 8) / 16
            col, row = u * s - 0.5, (1 - v_) * s - 0.5  # texel coordinates (align_corners=False)
            c0, r0 = math.floor(col), math.floor(row)
            if c0 // 8 != (c0 + 1) // 8 or r0 // 8 != (r0 + 1) // 8:
                continue  # bilinear footprint straddles two blocks
            expected = colours[r0 // 8, c0 // 8]
            torch.testing.assert_close(out.albedo[0, :, y, x], expected)
            torch.testing.assert_close(out.rendered[0, :, y, x], expected)
            torch.testing.assert_close(out.uv[0, :, y, x], torch.tensor([u, v_]).double())
            checked += 1
    assert checked >= 64
    assert bool((out.albedo[0][:, ~inside] == 0).all())


def test_dc_light_gives_constant_shading_and_plane_normal_is_z():
    v, f, uv = quad()
    renderer = MeshRenderer(f, uv, f)
    screen = orthographic_project(v[None], torch.tensor([[0.7, 0.1, 0.0]], dtype=torch.float64))
    light = dc_light(1, 2.0)
    out = renderer(v[None], screen, torch.ones(1, 3, 8, 8, dtype=torch.float64), light, (20, 24))
    mask = out.mask[0, 0] > 0
    assert int(mask.sum()) > 100
    torch.testing.assert_close(
        out.shading[0][:, mask], torch.full((3, int(mask.sum())), 2.0 * SH_CONSTANTS[0]).double()
    )
    normal = out.normal[0][:, mask]
    torch.testing.assert_close(
        normal, torch.tensor([0.0, 0.0, 1.0]).double()[:, None].expand_as(normal)
    )
    assert bool((out.normal[0][:, ~mask] == 0).all())
    assert bool((out.shading[0][:, ~mask] == 0).all())
    # depth: screen z = -s z_world = 0 on the plane, and 0 on the background as well
    assert bool((out.depth == 0).all())


def test_buffers_shapes_dtype_and_depth():
    v, f, uv = sphere()
    renderer = MeshRenderer(f, uv, f)
    verts = torch.stack([v, v * 0.8])
    cam = torch.tensor([[0.8, 0.0, 0.0], [0.8, 0.2, -0.1]], dtype=torch.float64)
    screen = orthographic_project(verts, cam)
    out = renderer(verts, screen, torch.rand(1, 3, 16, 16, dtype=torch.float64), dc_light(2), 24)
    for name in ("rendered", "normal", "albedo", "shading"):
        assert getattr(out, name).shape == (2, 3, 24, 24)
        assert getattr(out, name).dtype == torch.float64
    assert out.mask.shape == out.depth.shape == (2, 1, 24, 24)
    assert out.uv.shape == (2, 2, 24, 24)
    assert out.condition_channels == 9
    mask = out.mask > 0
    # visible points of a sphere of radius r scaled by s: depth = -s sqrt(r^2 - x^2 - y^2)
    assert float(out.depth[mask].max()) < 0
    assert bool((out.depth[~mask] == 0).all())
    assert float(out.uv.min()) >= 0
    assert float(out.uv.max()) <= 1
    # the visible hemisphere faces the camera: world normals have z > 0 at the centre
    assert float(out.normal[0, 2, 12, 12]) > 0.95


def test_gradients_reach_vertices_texture_and_light():
    v, f, uv = sphere(6)
    renderer = MeshRenderer(f, uv, f)
    verts = v[None].clone().requires_grad_(True)
    tex = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    light = dc_light(1).clone()
    light[:, 3] = 0.5
    light.requires_grad_(True)
    screen = orthographic_project(verts, torch.tensor([[0.8, 0.0, 0.0]], dtype=torch.float64))
    out = renderer(verts, screen, tex, light, 16)
    out.rendered.sum().backward()
    for t in (verts, tex, light):
        assert t.grad is not None
        assert bool(torch.isfinite(t.grad).all())
        assert float(t.grad.abs().sum()) > 0


def test_light_gradcheck_through_the_renderer():
    v, f, uv = sphere(5)
    renderer = MeshRenderer(f, uv, f)
    screen = orthographic_project(v[None], torch.tensor([[0.8, 0.0, 0.0]], dtype=torch.float64))
    tex = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    light = torch.randn(1, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda li: renderer(v[None], screen, tex, li, 6).rendered, (light,)
    )


def test_render_shape_of_a_plane_matches_decas_formula():
    v, f, uv = quad()
    renderer = MeshRenderer(f, uv, f)
    screen = orthographic_project(v[None], torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64))
    images, alpha = renderer.render_shape(v[None], screen, (16, 16))
    # n = (0, 0, 1); four lights at (+-1, +-1, 1)/sqrt 3 and one at (0, 0, 1)
    expected = SHAPE_COLOR * SHAPE_LIGHT_INTENSITY * (4 / math.sqrt(3) + 1) / 5
    mask = alpha[0, 0] > 0
    assert int(mask.sum()) == 64
    torch.testing.assert_close(images[0][:, mask], torch.full((3, 64), expected).double())
    assert bool((images[0][:, ~mask] == 0).all())
    # background is composited outside alpha; normal images replace the interpolated ones
    bg = torch.full((1, 3, 16, 16), 0.25, dtype=torch.float64)
    normals = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    normals[:, 0] = 1.0  # facing +x: lit by the two +x lights only
    images, _ = renderer.render_shape(v[None], screen, 16, background=bg, normal_images=normals)
    assert float(images[0, 0, 0, 0]) == 0.25
    lit = SHAPE_COLOR * SHAPE_LIGHT_INTENSITY * (2 / math.sqrt(3)) / 5
    assert float(images[0, 1, 8, 8]) == pytest.approx(lit)


def test_render_shape_hides_surfaces_facing_away():
    v, f, uv = quad()
    renderer = MeshRenderer(f.flip(1), uv, f.flip(1))  # the plane now faces away (-z)
    screen = orthographic_project(v[None], torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64))
    images, alpha = renderer.render_shape(v[None], screen, 16)
    assert float(alpha.sum()) == 0
    assert float(images.abs().sum()) == 0
    # still rasterized (back faces are not culled): the buffers see it
    out = renderer(v[None], screen, torch.ones(1, 3, 4, 4, dtype=torch.float64), dc_light(1), 16)
    assert float(out.mask.sum()) == 64


def test_identity_crop_equals_the_plain_render():
    v, f, uv = sphere()
    renderer = MeshRenderer(f, uv, f)
    screen = orthographic_project(v[None], torch.tensor([[0.7, 0.1, 0.05]], dtype=torch.float64))
    tex = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    crop = CropTransform(torch.eye(3, dtype=torch.float64)[None], 64, (64, 64))
    plain = renderer(v[None], screen, tex, dc_light(1), 64)
    cropped = renderer(v[None], screen, tex, dc_light(1), crop=crop)
    for name in ("rendered", "normal", "albedo", "mask", "depth", "uv", "shading"):
        torch.testing.assert_close(getattr(cropped, name), getattr(plain, name))
    shape_plain = renderer.render_shape(v[None], screen, 64)
    shape_crop = renderer.render_shape(v[None], screen, crop=crop)
    torch.testing.assert_close(shape_crop, shape_plain)


def test_translated_crop_shifts_the_image():
    v, f, uv = sphere()
    renderer = MeshRenderer(f, uv, f)
    screen = orthographic_project(v[None], torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64))
    tex = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64)[None].clone()
    matrix[0, 0, 2], matrix[0, 1, 2] = 5.0, -3.0  # crop pixel = original pixel + (5, -3)
    crop = CropTransform(matrix, 48, (56, 64))
    plain = renderer(v[None], screen, tex, dc_light(1), 48)
    moved = renderer(v[None], screen, tex, dc_light(1), crop=crop)
    assert moved.rendered.shape == (1, 3, 56, 64)
    # original pixel o shows crop pixel o + (5, -3): moved[y, x] = plain[y - 3, x + 5]
    torch.testing.assert_close(moved.rendered[..., 3:51, 0:43], plain.rendered[..., 0:48, 5:48])
    torch.testing.assert_close(moved.mask[..., 3:51, 0:43], plain.mask[..., 0:48, 5:48])
    assert float(moved.mask.sum()) == float(plain.mask.sum())  # the sphere stays inside
    with pytest.raises(ValueError, match="differs"):
        renderer(v[None], screen, tex, dc_light(1), 48, crop=crop)


def test_float32_and_invalid_inputs():
    v, f, uv = sphere(4, dtype=torch.float32)
    renderer = MeshRenderer(f, uv, f)
    screen = orthographic_project(v[None], torch.tensor([[0.8, 0.0, 0.0]]))
    out = renderer(v[None], screen, torch.rand(1, 3, 4, 4), dc_light(1, dtype=torch.float32), 8)
    assert out.rendered.dtype == torch.float32
    with pytest.raises(ValueError, match="light"):
        renderer(v[None], screen, torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 3), 8)
    with pytest.raises(ValueError, match="albedo_texture"):
        renderer(v[None], screen, torch.rand(1, 4, 4), dc_light(1, dtype=torch.float32), 8)
    with pytest.raises(ValueError, match="image_size"):
        renderer(v[None], screen, torch.rand(1, 3, 4, 4), dc_light(1, dtype=torch.float32))
    with pytest.raises(ValueError, match="differ"):
        renderer(
            v[None], screen[:, :-1], torch.rand(1, 3, 4, 4), dc_light(1, dtype=torch.float32), 8
        )
    with pytest.raises(ValueError, match="uv_faces"):
        MeshRenderer(f, uv, f[:-1])
    assert not renderer.state_dict()  # topology comes from the assets, not checkpoints


def test_vertex_and_texture_gradcheck_through_the_renderer():
    v, f, uv = sphere(5)
    renderer = MeshRenderer(f, uv, f)
    cam = torch.tensor([[0.8, 0.05, -0.03]], dtype=torch.float64)
    light = dc_light(1).clone()
    light[:, 1:4] = torch.tensor([0.3, -0.2, 0.6], dtype=torch.float64)[:, None]
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    verts = v[None].clone().requires_grad_(True)

    def fn(x, t):
        out = renderer(x, orthographic_project(x, cam), t, light, 7)
        return out.rendered, out.normal, out.uv, out.depth

    # pixel coverage is frozen under the tiny perturbations of gradcheck
    assert torch.autograd.gradcheck(fn, (verts, tex), eps=1e-7, atol=1e-5)
