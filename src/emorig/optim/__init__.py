"""General optimisers, with no knowledge of faces, heads or images.

:func:`~emorig.optim.lbfgs.batched_lbfgs` minimises a batch of independent objectives with one
L-BFGS per batch entry; :func:`~emorig.optim.minimise.minimise` runs it, or one of the
``torch.optim`` baselines, by name. The face fitting of :mod:`emorig.reconstruct.fitting`
is built on them.
"""

from emorig.optim.lbfgs import batched_lbfgs
from emorig.optim.minimise import OPTIMIZERS, minimise

__all__ = ["OPTIMIZERS", "batched_lbfgs", "minimise"]
