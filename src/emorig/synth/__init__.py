"""Synthetic faces from the built-in head, with known truth: the embedded default's data.

Every image here is a render of a procedurally generated head, not a photo of a person.
"""

from emorig.synth.datasets import (
    CODE_FIELDS,
    MODES,
    PhotoStyle,
    SynthDatasetConfig,
    SynthDatasetResult,
    SynthFaces,
    SynthPlan,
    frame_like_ffhq,
    iter_synth_faces,
    plan_dataset,
    read_codes,
    render_plan,
    synthesize,
    write_dataset,
)

__all__ = [
    "CODE_FIELDS",
    "MODES",
    "PhotoStyle",
    "SynthDatasetConfig",
    "SynthDatasetResult",
    "SynthFaces",
    "SynthPlan",
    "frame_like_ffhq",
    "iter_synth_faces",
    "plan_dataset",
    "read_codes",
    "render_plan",
    "synthesize",
    "write_dataset",
]
