"""Training loops and their configurations (reconstruction, emotion, diffusion stages 1 / 2).

Only ``emorig.cli`` and the demo import this package; everything a trained model needs at
inference (loading, sampling, editing, the prepared-data format) lives outside it.
"""
