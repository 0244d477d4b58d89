"""``emorig render``: a head in several expressions and poses -> PNG buffers and a contact
sheet. Thin: flags -> :func:`~emorig.render.showcase.render_showcase`."""

from __future__ import annotations

import argparse
import time

from emorig.cli import options
from emorig.cli.shared import load_head

#: The command's name and its line in ``emorig --help``.
NAME = "render"
HELP = "render a head in several expressions and poses to PNG buffers and a contact sheet"


EPILOG = (
    "Face specs join terms with '+': an expression component by name (built-in head: "
    "{components}) or expN, shapeN, albedoN with an optional =VALUE, and "
    "jaw/yaw/pitch/roll/eyes=DEGREES. Example: --face smile=0.8+jaw=10 --face 'sad+yaw=-20'"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``render`` command to ``emorig``'s sub-commands; returns its parser."""
    from emorig.flame.builtin import EXPRESSION_COMPONENTS
    from emorig.flame.heads import ALBEDO_CHOICES
    from emorig.render.showcase import BUFFERS, DEFAULT_BUFFERS

    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description="Render DiffusionRig's condition buffers (Lambertian render, normals, "
        "albedo), DECA's grey shape image and the 68 landmarks for a set of faces.",
        epilog=EPILOG.format(components=", ".join(name for name, _ in EXPRESSION_COMPONENTS)),
    )
    options.add_head(p)
    options.add_assets(p)
    p.add_argument(
        "--albedo",
        default="auto",
        choices=ALBEDO_CHOICES,
        help="albedo space for FLAME heads (auto: FLAME_texture.npz, else the BFM one, else "
        "constant grey)",
    )
    p.add_argument(
        "--face",
        action="append",
        metavar="SPEC",
        help="a face to render (repeatable); default: a showcase of expressions and poses",
    )
    p.add_argument(
        "--size", type=options.image_size, default=256, help="image size in pixels (256)"
    )
    p.add_argument(
        "--buffers",
        default=",".join(DEFAULT_BUFFERS),
        type=buffer_list,
        help=f"comma list from {', '.join(BUFFERS)}",
    )
    p.add_argument(
        "--camera",
        default="7,0,0.005",
        type=options.camera,
        help="DECA orthographic camera s,tx,ty (default 7,0,0.005 frames the whole head)",
    )
    options.add_device(p)
    p.add_argument("--out", default="emorig-out/render", type=options.out_dir, help="output folder")
    p.set_defaults(func=cmd_render)
    return p


def buffer_list(text: str) -> list[str]:
    """``--buffers``: a comma list of at least one of the showcase's buffers."""
    from emorig.render.showcase import BUFFERS

    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [n for n in names if n not in BUFFERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma list of at least one of {', '.join(BUFFERS)}"
        )
    return names


def check_faces(faces: list[str] | None, head: str) -> None:
    """Parse every ``--face`` before any heavy work: a bad spec (``smiel``) fails at once with
    the known names. Expression names are the built-in head's (known without building it);
    FLAME heads have none (``expN`` only). Component numbers are checked against the
    built-in head's sizes here, against a FLAME head's once it is loaded."""
    from emorig.errors import EmorigError
    from emorig.flame import builtin
    from emorig.render.showcase import parse_face_specs

    if head != "builtin":
        parse_face_specs(faces or [])
        return
    sizes = {
        "expression": builtin.N_EXPRESSION,
        "shape": builtin.N_SHAPE,
        "albedo": builtin.N_ALBEDO,
    }
    for spec in parse_face_specs(faces or [], builtin.expression_names()):
        for what, n in sizes.items():
            for k in getattr(spec, what):
                if k >= n:
                    raise EmorigError(
                        f"face '{spec.label}': {what} component {k} does not exist "
                        f"(the built-in head has {n})"
                    )


def cmd_render(args: argparse.Namespace) -> int:
    from emorig.cli.output import say_building_head
    from emorig.render.showcase import BUILTIN_SHOWCASE, FLAME_SHOWCASE, render_showcase

    t = time.perf_counter()
    check_faces(args.face, args.head)
    if args.head == "builtin":
        say_building_head()
    head = load_head(args.head, args.assets, announce=False, albedo=args.albedo)
    faces = args.face or list(BUILTIN_SHOWCASE if head.synthetic else FLAME_SHOWCASE)
    buffers = args.buffers
    camera = list(args.camera)
    result = render_showcase(
        head, faces, args.out, size=args.size, buffers=buffers, camera=camera, device=args.device
    )
    print(
        f"rendered {len(faces)} faces of {head.flame.name} x {len(buffers)} buffers "
        f"at {args.size}px in {time.perf_counter() - t:.1f} s"
    )
    print(f"contact sheet: {result.sheet}")
    print(f"{len(result.files)} PNGs and the parameters ({result.parameters.name}) in {args.out}")
    return 0


__all__ = ["add_parser", "buffer_list", "check_faces", "cmd_render"]
