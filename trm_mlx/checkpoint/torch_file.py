"""Read files written by `torch.save` (zip format) into NumPy, without PyTorch.

Original checkpoints (`step_N`) and saved predictions (`step_N_all_preds.R`) are pickled dicts of tensors. The
unpickler below rebuilds tensors from their storages and refuses every other global, so reading an untrusted
file cannot run code. bfloat16 tensors are widened to float32 (exact); `load_with_dtypes` says which they were.
"""

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Tensor:
    """A tensor as the pickle describes it: a view (offset, shape, strides) into a storage."""

    def __init__(self, storage, offset, shape, strides):
        self.storage, self.offset, self.shape, self.strides = storage, offset, tuple(shape), tuple(strides)


def _rebuild_tensor(storage, offset, shape, strides, *_):
    return _Tensor(storage, offset, shape, strides)


def _rebuild_parameter(tensor, *_):
    return tensor


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a torch file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}/data/{key}")
            dtype = _STORAGE_DTYPES[storage_type.name]
            if dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                self.storages[key] = ("bfloat16", bits.view(np.float32))
            else:
                self.storages[key] = (np.dtype(dtype).name, np.frombuffer(raw, dtype=dtype))
        return self.storages[key]


def _materialize(t: _Tensor):
    dtype_name, flat = t.storage
    if not t.shape:
        return dtype_name, flat[t.offset].copy()
    strides = tuple(s * flat.itemsize for s in t.strides)
    view = np.lib.stride_tricks.as_strided(flat[t.offset :], shape=t.shape, strides=strides)
    return dtype_name, np.ascontiguousarray(view)


def load_with_dtypes(path) -> tuple[dict, dict]:
    """Returns ({name: ndarray}, {name: original dtype name}) for a torch-saved dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a torch zip file (saved with torch.save's default format)")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
            root = pickles[0][: -len("/data.pkl")]
            with archive.open(pickles[0]) as f:
                obj = _Unpickler(f, archive, root).load()
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError) as e:  # damaged bytes, missing storage
        raise ValueError(f"{path}: corrupt or unsupported torch checkpoint ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    arrays, dtypes = OrderedDict(), {}
    for name, value in obj.items():
        if not isinstance(value, _Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        dtypes[name], arrays[name] = _materialize(value)
    return arrays, dtypes


def load(path) -> dict:
    return load_with_dtypes(path)[0]
