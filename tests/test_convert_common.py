import numpy as np
import pytest
import torch

from vocabseg.convert import load_file


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_detectron2_style_file_with_numpy_arrays_loads_as_tensors(tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": torch.ones(2)},
                "__author__": "someone", "matching_heuristics": True}, path)
    sd = load_file(path)
    assert set(sd) == {"a", "b"} and isinstance(sd["a"], torch.Tensor)
    assert torch.equal(sd["a"], torch.arange(6, dtype=torch.float32).view(2, 3))


def test_code_in_a_pickle_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"a": _Evil()}}, path)
    with pytest.raises(ValueError, match="cannot load .*evil.pth: refused: it would import print") as e:
        load_file(path)
    assert "\n" not in str(e.value) and "this must never run" not in capsys.readouterr().out


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_file(tmp_path / "absent.pth")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pth"):
        load_file(tmp_path / "bad.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_file(tmp_path / "tensor.pth")
