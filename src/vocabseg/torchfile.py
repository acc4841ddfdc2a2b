"""Reading ``torch.save`` files safely: ``weights_only=True`` (tensors and plain data
only, no code runs), and a refusal is one line naming the file and why. Torch's own
message is never relayed: it advises ``weights_only=False``, which would run a
malicious file's payload."""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError, WeightsNotFound


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (``torch.jit.save``; OpenAI's CLIP releases): a zip
    whose records include ``<name>/constants.pkl`` and ``<name>/code/``."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n.split("/", 1)[-1] for n in z.namelist()]
    except (zipfile.BadZipFile, OSError):
        return False
    return "constants.pkl" in names and any(n.startswith("code/") for n in names)


def load_torch_file(path: str | os.PathLike, allowed: list | tuple = ()):
    """The object in a ``torch.save`` file, on the CPU, loaded with ``weights_only=True``
    (``allowed``: further safe globals, e.g. numpy arrays). Raises ``CheckpointError``
    naming the file for a missing, truncated, foreign or unsafe file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a weight file")
    if not path.is_file():
        raise WeightsNotFound(f"weight file not found: {path}")
    if is_torchscript(path):
        raise CheckpointError(f"cannot load {path}: it is a TorchScript archive, not a state dict")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.simplefilter("ignore")     # e.g. torch's note on the pickle protocol
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = (f"refused: it would import {found.group(1)}, and only tensors and plain data are loaded "
               f"(a file that imports code can run it)" if found else
               "it is not a PyTorch weight file, or it holds objects other than tensors and plain data")
    except EOFError:
        why = "it is empty or truncated"
    except (RuntimeError, OSError) as e:     # torch's zip reader on a cut file: "zip archive" / EINVAL
        why = ("it is truncated or corrupt" if isinstance(e, OSError) or "zip archive" in str(e)
               else "it is not a PyTorch weight file")
    except Exception:   # any other failure of a foreign file
        why = "it is not a PyTorch weight file"
    raise CheckpointError(f"cannot load {path}: {why}")
