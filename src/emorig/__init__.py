"""emorig: edit the expression, pose and lighting of portrait photos with DiffusionRig-EMO.

Importing the package touches no file, network or GPU; sub-packages follow the pipeline:
``faces`` -> ``reconstruct`` -> ``flame`` -> ``render`` -> ``diffusion`` -> ``edit``.
"""

__version__ = "0.1.0"
