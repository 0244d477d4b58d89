"""Read DECA's and EMOCA's official checkpoints safely and strictly; save and load our format.

This module gathers three others: :mod:`.torch_files` (reading), :mod:`.official_checkpoints`
(DECA and EMOCA) and :mod:`.pretrained` (our format).

Reading (:func:`load_torch_file`)
    Official checkpoints are ``torch.save`` pickles: DECA's ``deca_model.tar`` holds plain state
    dicts, EMOCA's PyTorch Lightning ``.ckpt`` files also pickle OmegaConf ``DictConfig``s and
    other objects in ``hyper_parameters``. They are read with ``torch.load`` (both the zip
    format and the legacy ``_use_new_zipfile_serialization=False`` stream) and an unpickler
    whose ``find_class`` decides every global:

    * **data types are used**: what ``torch.load(weights_only=True)`` accepts in this torch
      version (tensor and parameter rebuilders, storages, dtypes, ``torch.Size``,
      ``torch.device``, ``collections.OrderedDict``, ...), numpy's array/dtype/scalar
      reconstruction, ``copyreg._reconstructor``, and the built-in containers and scalars
      (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``int``, ``float``, ``complex``,
      ``str``, ``bytes``, ``bytearray``, ``bool``, ``slice``, ``range``, ``object``) plus
      ``collections.defaultdict``, ``Counter`` and ``deque``;
    * **code is refused**: any other global from ``builtins``, ``torch``, ``numpy``,
      ``collections``, ``copyreg``, ``_codecs``, or from modules that run programs, load code
      or touch files and sockets (``os``, ``posix``, ``subprocess``, ``sys``, ``importlib``,
      ``runpy``, ``pickle``, ``marshal``, ``types``, ``functools``, ``operator``, ``shutil``,
      ``socket``, ``ctypes``, ... see ``_REFUSED``) raises :class:`AssetError`;
    * **everything else becomes an inert stand-in** (:class:`StandIn`): a class that records
      its constructor arguments, pickled state, items and list entries, and runs nothing. This
      is how ``omegaconf.dictconfig.DictConfig``, ``pytorch_lightning`` helpers, ``typing.Any``
      or ``pathlib.PosixPath`` in ``hyper_parameters`` are read without those packages.

    TorchScript archives (which ``torch.load`` would hand to ``torch.jit.load``) are refused.

Strict loading (:func:`load_deca`, :func:`load_emoca`)
    Every network key of the file must match a parameter or buffer of our model with the same
    shape, and the reverse; otherwise an :class:`AssetError` lists the first missing,
    unexpected and mis-shaped keys with their counts. Keys are reported with the file's own
    names. The one tolerance: a missing BatchNorm ``num_batches_tracked`` counter (older
    PyTorch did not save it; it does not change eval outputs) is set to 0.

Our format (:func:`save_pretrained`, :func:`from_pretrained`)
    A folder with ``config.json`` (format name and version, architecture, sizes, variant) and
    ``model.safetensors`` (our key names), written atomically by
    :mod:`emorig.io.model_folder`.
"""

from emorig.reconstruct.official_checkpoints import (
    DECA_PREFIXES,
    EMOCA_IGNORED_KEYS,
    EMOCA_IGNORED_PREFIXES,
    EMOCA_PREFIXES,
    emoca_config_from_yaml,
    find_emoca_checkpoint,
    load_deca,
    load_emoca,
)
from emorig.reconstruct.pretrained import (
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    from_pretrained,
    save_pretrained,
)
from emorig.reconstruct.torch_files import StandIn, load_torch_file

__all__ = [
    "CONFIG_NAME",
    "DECA_PREFIXES",
    "EMOCA_IGNORED_KEYS",
    "EMOCA_IGNORED_PREFIXES",
    "EMOCA_PREFIXES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "StandIn",
    "emoca_config_from_yaml",
    "find_emoca_checkpoint",
    "from_pretrained",
    "load_deca",
    "load_emoca",
    "load_torch_file",
    "save_pretrained",
]
