"""Read DECA's and EMOCA's official checkpoints safely and strictly; save and load our format.

This module gathers three others and re-exports their names:

* :mod:`.torch_files` -- :func:`load_torch_file`: ``torch.save`` pickles read without running
  code (data types are used, code is refused, anything else becomes an inert stand-in);
* :mod:`.official_checkpoints` -- :func:`load_deca`, :func:`load_emoca`: strict loading of
  DECA's ``deca_model.tar`` and EMOCA's model folders, keys reported with the file's names;
* :mod:`.pretrained` -- :func:`save_pretrained`, :func:`from_pretrained`: our model folder
  (:mod:`emorig.io.model_folder`).
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
