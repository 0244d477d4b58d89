"""Readers and writers for the files emorig uses: official FLAME/DECA/EMOCA assets and ours.

Official pickles are read with a restricted unpickler (:mod:`emorig.io.pickles`): no code from
a data file runs, and neither chumpy nor scipy is needed. Every problem with a user file is an
:class:`emorig.errors.AssetError` naming the file and where to obtain it. Our own files are
pickle-free ``.npz`` archives carrying a ``format`` version, written atomically.
"""

from emorig.io.albedo_files import read_albedo_space, write_albedo_npz
from emorig.io.atomic import atomic_write, save_npz_atomic
from emorig.io.flame_files import (
    read_flame,
    read_landmark_embedding,
    read_mediapipe_embedding,
    write_flame_npz,
    write_landmark_embedding_npz,
)
from emorig.io.obj import read_obj, read_uv_layout, write_obj
from emorig.io.pickles import load_npy_object, load_pickle

__all__ = [
    "atomic_write",
    "load_npy_object",
    "load_pickle",
    "read_albedo_space",
    "read_flame",
    "read_landmark_embedding",
    "read_mediapipe_embedding",
    "read_obj",
    "read_uv_layout",
    "save_npz_atomic",
    "write_albedo_npz",
    "write_flame_npz",
    "write_landmark_embedding_npz",
    "write_obj",
]
