"""Synthetic faces from the built-in head, with known truth: the embedded default's data.

* :mod:`~emorig.synth.sampling` -- random face codes, DECA-style framing, backgrounds, batches;
* :mod:`~emorig.synth.datasets` -- album / random / multi-view datasets written to folders;
* :mod:`~emorig.synth.prepared` -- the same as prepared folders (no reconstruction needed).

Every image here is a render of a procedurally generated head, not a photo of a person.
"""
