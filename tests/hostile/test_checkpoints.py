"""Hostile and careless inputs around weights and checkpoints (issue 19, items 6-11, 14,
15 and the smaller ones, plus further cases): each gives one clear line, the right
network, or a safe fallback; a malicious pickle never runs."""
import json
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import vocabseg
from vocabseg.backbones.clip import create_clip, register_configs
from vocabseg.checkpoint import save_checkpoint
from vocabseg.cli import main
from vocabseg.files import atomic_write
from vocabseg.registry import build, get_spec, load_checkpoint
from vocabseg.text import TextEncoder

LABELS = "cat; dog"


# --- helpers -------------------------------------------------------------------------
class Payload:
    """A pickle whose loading would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious(path, marker):
    torch.save({"model": {"w": Payload(marker)}, "iteration": 1, "optimizer": {}, "rng": []}, path)
    return path


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err, cmd="segment"):
    """The single stderr line of a refused command, without its prefix."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vocabseg {cmd}: error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err and "weights_only` set to `False" not in err
    return lines[0][len(f"vocabseg {cmd}: error: "):]


def succeeded(code, err):
    """Exit 0 and nothing on stderr but segment's summary line."""
    return code == 0 and err.splitlines() == [x for x in err.splitlines() if " 1 of 1 images written" in x] != []


def activations(module):
    return {type(m).__name__ for m in module.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """Tiny checkpoints (san-tiny, segclip-tiny) and an image."""
    root = tmp_path_factory.mktemp("ck")
    for name in ("san-tiny", "segclip-tiny"):
        torch.manual_seed(0)
        save_checkpoint(get_spec(name).build(), root / name)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "a.png")
    return root


def copy_ck(ck, name, dst):
    return Path(shutil.copytree(ck / name, dst))


def segment(capsys, ck, tmp_path, *args):
    return cli(capsys, "segment", ck / "a.png", "--labels", LABELS, "--out", tmp_path / "out", *args)


# --- item 6: CLIP activation from the content, never from the file name ----------------
@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """The same tiny CLIP (QuickGELU-trained, say) as an OpenAI TorchScript archive, an
    OpenAI state dict (with its input_resolution entry) and a plain state dict."""
    register_configs()
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(1)
    model = open_clip.create_model("tiny-vit", force_quick_gelu=True).eval()
    model.register_buffer("input_resolution", torch.tensor(64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(root / "archive.bin"))     # OpenAI's release format
    torch.save(model.state_dict(), root / "openai_layout.pt")
    plain = {k: v for k, v in model.state_dict().items() if k != "input_resolution"}
    torch.save(plain, root / "plain.pt")
    return root, model


def text_features(clip):
    tokens = open_clip.get_tokenizer("tiny-vit")(["a photo of a cat", "a dog"])
    with torch.no_grad():
        return clip.encode_text(tokens)


def test_clip_same_bytes_under_openai_names_give_the_same_network(clip_files, tmp_path):
    root, _ = clip_files
    nets = []
    for name in ("weights.pt", "ViT-B-16.pt", "openai.pt", "clip-openai-b16.pt"):
        shutil.copy(root / "plain.pt", tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nets.append(create_clip("tiny-vit", str(tmp_path / name))[0])
    assert all(activations(n) == activations(nets[0]) for n in nets)
    assert all(torch.equal(text_features(n), text_features(nets[0])) for n in nets)


def test_clip_openai_torchscript_archive_is_quick_gelu(clip_files):
    root, reference = clip_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no activation warning: the content tells
        clip = create_clip("tiny-vit", str(root / "archive.bin"))[0]
    assert activations(clip) == {"QuickGELU"}
    assert torch.allclose(text_features(clip), text_features(reference), atol=1e-6)


def test_clip_openai_state_dict_layout_is_quick_gelu(clip_files):
    root, reference = clip_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip = create_clip("tiny-vit", str(root / "openai_layout.pt"))[0]
    assert activations(clip) == {"QuickGELU"}
    assert torch.equal(text_features(clip), text_features(reference))


def test_clip_plain_state_dict_is_gelu_with_one_warning(clip_files):
    root, _ = clip_files
    with pytest.warns(UserWarning, match="do not say whether they are OpenAI's .*assuming tiny-vit's GELU") as w:
        clip = create_clip("tiny-vit", str(root / "plain.pt"))[0]
        create_clip("tiny-vit", str(root / "plain.pt"))          # said once per file
    assert activations(clip) == {"GELU"} and len(w) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # an explicit choice needs no warning
        assert activations(create_clip("tiny-vit", str(root / "plain.pt"), quick_gelu=True)[0]) == {"QuickGELU"}


def test_clip_activation_survives_a_checkpoint(clip_files, tmp_path):
    from vocabseg.backbones.clip import clip_activation
    root, _ = clip_files
    model = get_spec("maskclip-tiny").build(clip_weights=str(root / "archive.bin"))
    assert clip_activation(model) == "quick_gelu"
    again = load_checkpoint(save_checkpoint(model, tmp_path / "tf"))
    assert clip_activation(again) == "quick_gelu"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.dense_tokens(x)[0], again.dense_tokens(x)[0])


def test_clip_weights_of_another_architecture_is_one_line(clip_files, ck, tmp_path, capsys):
    register_configs()
    torch.save(open_clip.create_model("tiny-convnext").state_dict(), tmp_path / "convnext.pt")
    code, _, err = segment(capsys, ck, tmp_path, "--model", "maskclip-tiny", "--clip-weights", tmp_path / "convnext.pt")
    assert code == 2 and "convnext.pt does not hold tiny-vit CLIP weights; missing" in one_line(err)


def test_clip_weights_as_safetensors_load_like_the_pickle(clip_files, tmp_path):
    root, _ = clip_files
    save_file(torch.load(root / "plain.pt", weights_only=True), tmp_path / "clip.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = create_clip("tiny-vit", str(tmp_path / "clip.safetensors"))[0]
        b = create_clip("tiny-vit", str(root / "plain.pt"))[0]
    assert torch.equal(text_features(a), text_features(b))


@pytest.mark.parametrize("given, expected", [("nothere.pt", "CLIP weights file not found: {d}/nothere.pt"),
                                             ("", "CLIP weights {d}/ is a folder, not a weight file"),
                                             ("nonsense", "unknown CLIP weights 'nonsense' for tiny-vit")])
def test_clip_weights_that_are_not_a_file_or_tag_are_one_line(ck, tmp_path, capsys, given, expected):
    weights = "nonsense" if given == "nonsense" else f"{tmp_path}/{given}"
    code, _, err = segment(capsys, ck, tmp_path, "--model", "maskclip-tiny", "--clip-weights", weights)
    assert code == 2 and one_line(err).startswith(expected.format(d=tmp_path))


# --- item 7: read-only $VOCABSEG_HOME ---------------------------------------------------------
def test_unwritable_text_cache_falls_back_to_memory_with_one_warning(tmp_path, monkeypatch, clip_files):
    root, _ = clip_files
    home = tmp_path / "home"
    home.mkdir()
    (home / "text").write_text("")               # cannot hold entries (works as root too) ...
    os.chmod(home, 0o555)                        # ... and read-only for a normal user
    monkeypatch.setenv("VOCABSEG_HOME", str(home))
    clip, tok, ident = create_clip("tiny-vit", None)
    enc = TextEncoder(clip, tok, ident, "single")
    with pytest.warns(UserWarning, match="cannot be written .*kept in memory") as w:
        a = enc.encode_names(["cat", "dog"])
        b = TextEncoder(clip, tok, ident, "single").encode_names(["sofa"])
    assert len(w) == 1 and a.shape[0] == 2 and b.shape[0] == 1
    assert torch.equal(enc.encode_names(["cat", "dog"]), a)
    os.chmod(home, 0o755)


# --- item 8: resume from a damaged latest checkpoint -----------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-iteration segclip-tiny run with checkpoints at 2 and 4, its config and losses."""
    from vocabseg.data.captions import shape_sample, write_shards
    from vocabseg.engine.training.config import validate
    from vocabseg.engine.training.train import train
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    write_shards(root / "shards", [shape_sample(rng, 64)[:2] for _ in range(8)], per_shard=4)
    cfg = validate({"model": {"preset": "segclip-tiny"},
                    "data": {"train": [{"type": "webdataset", "path": str(root / "shards")}], "workers": 0,
                             "transform": {"size": 64, "sp_short_side": 64, "sp_scale": 64, "sp_min_size": 32}},
                    "optim": {"lr": 1e-3}, "schedule": {"iterations": 4},
                    "train": {"batch_size": 4, "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 0}})
    train(cfg, root / "full", progress=False)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root, cfg, losses(root / "full")


def losses(folder):
    return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def damaged_run(run, tmp_path, damage):
    root, _, _ = run
    folder = Path(shutil.copytree(root / "full", tmp_path / "r"))
    latest = folder / "checkpoints" / "iter_00000004.pt"
    damage(latest)
    (folder / "checkpoints" / "last").write_text(latest.name + "\n")
    (folder / "model").exists() and shutil.rmtree(folder / "model")
    return folder, latest


def resume_from_damaged(run, tmp_path, capsys, damage, reason):
    from vocabseg.engine.training.train import train
    _, cfg, full = run
    folder, latest = damaged_run(run, tmp_path, damage)
    out = train(cfg, folder, resume=True, progress=False)
    printed = capsys.readouterr().out.splitlines()
    warning = [x for x in printed if x.startswith("warning:")]
    assert warning == [f"warning: cannot load {latest}: {reason}; resuming from "
                       f"{folder / 'checkpoints' / 'iter_00000002.pt'}"]
    assert out["iteration"] == 4 and losses(folder)[-2:] == full[2:]      # the run continued exactly


def test_resume_skips_a_truncated_latest_checkpoint(run, tmp_path, capsys):
    resume_from_damaged(run, tmp_path, capsys, lambda p: p.write_bytes(p.read_bytes()[:5000]),
                        "it is truncated or corrupt")


def test_resume_skips_a_garbage_latest_checkpoint_without_torch_advice(run, tmp_path, capsys):
    resume_from_damaged(run, tmp_path, capsys, lambda p: p.write_bytes(random.Random(0).randbytes(4000)),
                        "it is not a PyTorch weight file, or it holds objects other than tensors and plain data")


def test_resume_refuses_in_one_line_when_nothing_is_intact(run, tmp_path, capsys):
    root, _, _ = run
    folder, _ = damaged_run(run, tmp_path, lambda p: p.write_bytes(b""))
    (folder / "checkpoints" / "iter_00000002.pt").write_bytes(b"garbage")
    code, _, err = cli(capsys, "train", root / "config.yaml", "--output", folder, "--resume", "--no-progress")
    msg = one_line(err, "train")
    assert code == 2 and msg.startswith(f"nothing to resume under {folder}: no checkpoint is intact")
    assert "iter_00000004.pt: it is empty or truncated" in msg


def test_resume_on_a_run_of_another_model_is_one_line(run, tmp_path, capsys):
    root, cfg, _ = run
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**cfg, "model": {"preset": "segclip-tiny", "decoder_depth": 2}}))
    code, _, err = cli(capsys, "train", other, "--output", tmp_path / "x", "--resume",
                       root / "full" / "checkpoints" / "iter_00000002.pt", "--no-progress")
    msg = one_line(err, "train")
    assert code == 2 and "iter_00000002.pt does not fit this run's model segclip-tiny" in msg and "unexpected" in msg


def test_resume_ignores_a_last_pointer_outside_the_run(run, tmp_path, capsys):
    from vocabseg.engine.training.checkpoint import load_training_state
    folder, _ = damaged_run(run, tmp_path, lambda p: None)
    outside = tmp_path / "elsewhere.pt"
    shutil.copy(folder / "checkpoints" / "iter_00000002.pt", outside)
    (folder / "checkpoints" / "last").write_text("../../elsewhere.pt\n")
    assert load_training_state(folder)["path"] == str(folder / "checkpoints" / "iter_00000004.pt")


# --- item 9: malicious pickles: refused in one line, the payload never runs -----------------
def test_malicious_clip_weights_are_refused(ck, tmp_path, capsys):
    evil = write_malicious(tmp_path / "evil.pth", tmp_path / "ran")
    code, _, err = segment(capsys, ck, tmp_path, "--model", "maskclip-tiny", "--clip-weights", evil)
    assert code == 2 and one_line(err) == (f"cannot load {evil}: refused: it would import posix.system, and only "
                                           "tensors and plain data are loaded (a file that imports code can run it)")
    assert not (tmp_path / "ran").exists()


def test_malicious_published_weights_are_refused(ck, tmp_path, capsys):
    evil = write_malicious(tmp_path / "san_vit_b_16.pth", tmp_path / "ran")
    code, _, err = segment(capsys, ck, tmp_path, "--model", "san-tiny", "--weights", evil)
    assert code == 2 and one_line(err).startswith(f"cannot load {evil}: refused: it would import posix.system")
    assert not (tmp_path / "ran").exists()


def test_malicious_resume_file_is_refused(run, tmp_path, capsys):
    root, _, _ = run
    evil = write_malicious(tmp_path / "iter_00000009.pt", tmp_path / "ran")
    code, _, err = cli(capsys, "train", root / "config.yaml", "--output", tmp_path / "o", "--resume", evil,
                       "--no-progress")
    assert code == 2 and one_line(err, "train").startswith(f"cannot load {evil}: refused: it would import posix")
    assert not (tmp_path / "ran").exists()


def test_malicious_latest_checkpoint_of_a_run_folder_is_skipped(run, tmp_path, capsys):
    from vocabseg.engine.training.train import train
    _, cfg, _ = run
    folder, latest = damaged_run(run, tmp_path, lambda p: write_malicious(p, tmp_path / "ran"))
    out = train(cfg, folder, resume=True, progress=False)
    printed = capsys.readouterr().out
    assert f"warning: cannot load {latest}: refused: it would import posix.system" in printed
    assert out["iteration"] == 4 and not (tmp_path / "ran").exists()


# --- item 10 and further: broken checkpoint folders ------------------------------------------
def _truncate(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100_000])


def _other_model(folder, ck):
    shutil.copy(ck / "segclip-tiny" / "model.safetensors", folder / "model.safetensors")


def _wrong_shape(folder):
    sd = load_file(folder / "model.safetensors")
    sd["bg_embed"] = sd["bg_embed"][:, :5].clone()
    save_file(sd, folder / "model.safetensors")


def _nan(folder):
    sd = load_file(folder / "model.safetensors")
    sd["bg_embed"][0, 0] = float("nan")
    save_file(sd, folder / "model.safetensors")


def _config(text):
    return lambda folder: (folder / "config.json").write_text(text)


BROKEN = {
    "truncated": (_truncate, "checkpoint {f}: model.safetensors is truncated"),
    "empty_weights": (lambda f: (f / "model.safetensors").write_bytes(b""), "checkpoint {f}: model.safetensors is truncated"),
    "other_model": (None, "checkpoint {f} does not fit san-tiny (weights of another model or options?); missing (74): "),
    "wrong_shape": (_wrong_shape, "checkpoint {f} does not fit san-tiny (weights of another model or options?); "
                                  "wrong shape (1): bg_embed: file (1, 5) vs model (1, 32)"),
    "nan_weights": (_nan, "checkpoint {f}: 1 tensor(s) hold NaN (e.g. bg_embed); it came from a diverged or damaged run"),
    "corrupt_config": (_config('{"format": "vocab'), "checkpoint {f}: config.json is not valid JSON (line 1, column 12"),
    "config_is_a_list": (_config("[1, 2]"), "checkpoint {f}: config.json is not a vocabseg checkpoint config"),
    "config_not_utf8": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe{"), "checkpoint {f}: config.json cannot be read"),
    "unknown_preset": (_config('{"format": "vocabseg", "config": {"preset": "san-vit-b61"}}'),
                       "checkpoint {f} is of an unknown model 'san-vit-b61'; did you mean san-vit-b16"),
    "no_preset": (_config('{"format": "vocabseg", "config": {}}'), "checkpoint {f}: config.json names no preset"),
    "unknown_option": (_config('{"format": "vocabseg", "config": {"preset": "san-tiny", "frobnicate": 3}}'),
                       "checkpoint {f}: its options ['frobnicate'] do not fit preset san-tiny"),
    "bad_option_value": (_config('{"format": "vocabseg", "config": {"preset": "san-tiny", "split": 99}}'),
                         "checkpoint {f}: its options ['split'] do not fit preset san-tiny: split must be in 1..3"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), "checkpoint folder {f} is incomplete: no model.safetensors"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoint_folder_is_one_line(ck, tmp_path, capsys, case):
    damage, expected = BROKEN[case]
    folder = copy_ck(ck, "san-tiny", tmp_path / "bad")
    _other_model(folder, ck) if damage is None else damage(folder)
    code, _, err = segment(capsys, ck, tmp_path, "--model", folder)
    assert code == 2 and one_line(err).startswith(expected.format(f=folder)), err


def test_checkpoint_from_a_newer_version_with_unknown_fields_loads(ck, tmp_path):
    folder = copy_ck(ck, "san-tiny", tmp_path / "newer")
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "version": 7, "trained_with": {"gpus": 8}}))
    a, b = load_checkpoint(folder), load_checkpoint(ck / "san-tiny")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_symlink_loop_as_model_is_one_line(ck, tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    code, _, err = segment(capsys, ck, tmp_path, "--model", tmp_path / "a")
    assert code == 2 and one_line(err) == f"{tmp_path / 'a'} cannot be read (Too many levels of symbolic links)"


def test_empty_folder_as_model_is_one_line(ck, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = segment(capsys, ck, tmp_path, "--model", tmp_path / "empty")
    assert code == 2 and one_line(err).startswith(f"{tmp_path / 'empty'} is not a vocabseg checkpoint folder")


def test_file_instead_of_a_folder_as_model_is_one_line(ck, tmp_path, capsys):
    shutil.copy(ck / "san-tiny" / "model.safetensors", tmp_path / "san.pth")
    code, _, err = segment(capsys, ck, tmp_path, "--model", tmp_path / "san.pth")
    assert code == 2 and one_line(err) == (f"{tmp_path / 'san.pth'} is not a vocabseg checkpoint folder (model."
                                           f"safetensors + config.json); for a published file use --model NAME "
                                           f"--weights {tmp_path / 'san.pth'}")


def test_missing_model_path_is_one_line(ck, tmp_path, capsys):
    code, _, err = segment(capsys, ck, tmp_path, "--model", tmp_path / "nowhere")
    assert code == 2 and one_line(err).startswith(f"{tmp_path / 'nowhere'} does not exist")


def test_folder_named_like_a_zoo_model_does_not_hide_it(ck, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "san-tiny").mkdir()                 # e.g. an earlier --out san-tiny
    code, _, err = segment(capsys, ck, tmp_path, "--model", "san-tiny")
    assert succeeded(code, err)


def test_weights_folder_that_is_not_a_checkpoint_is_one_line(ck, tmp_path, capsys):
    (tmp_path / "w").mkdir()
    code, _, err = segment(capsys, ck, tmp_path, "--model", "san-tiny", "--weights", tmp_path / "w")
    assert code == 2 and one_line(err).startswith(f"{tmp_path / 'w'} is not a vocabseg checkpoint folder")


def test_checkpoint_folder_with_weights_too_is_one_line(ck, tmp_path, capsys):
    code, _, err = segment(capsys, ck, tmp_path, "--model", ck / "san-tiny", "--weights", ck / "segclip-tiny")
    assert code == 2 and one_line(err) == (f"{ck / 'san-tiny'} is a checkpoint folder with its own weights: "
                                           f"drop --weights {ck / 'segclip-tiny'}")


def test_published_file_of_another_method_is_one_line(ck, tmp_path, capsys):
    from vocabseg.methods.san.convert import from_ours
    torch.save({"model": from_ours(load_checkpoint(ck / "san-tiny").state_dict(), split=2)}, tmp_path / "san.pth")
    code, _, err = segment(capsys, ck, tmp_path, "--model", "fcclip-tiny", "--weights", tmp_path / "san.pth")
    assert code == 2 and "is not a published FC-CLIP checkpoint" in one_line(err)


# --- item 11: --model that disagrees with the checkpoint ------------------------------------
def test_model_that_disagrees_with_the_checkpoint_is_refused(ck, tmp_path, capsys):
    code, _, err = segment(capsys, ck, tmp_path, "--model", "segclip-tiny", "--weights", ck / "san-tiny")
    assert code == 2 and one_line(err).startswith(
        f"--model segclip-tiny disagrees with checkpoint {ck / 'san-tiny'}, which holds san-tiny")
    code, _, err = segment(capsys, ck, tmp_path, "--model", "san-tiny", "--weights", ck / "san-tiny")
    assert succeeded(code, err)


# --- item 14: SegCLIP without its training-only parts ---------------------------------------
@pytest.mark.parametrize("dropped", [("vis_mae_decoder.",),
                                     ("vis_mae_decoder.", "clip.visual.transformer.layers_mae2.",
                                      "clip.visual.transformer.reconstruct_layer2.")])
def test_segclip_without_training_only_parts_loads_for_inference(ck, tmp_path, dropped):
    from vocabseg.methods.segclip.convert import from_ours
    full = load_checkpoint(ck / "segclip-tiny")
    published = {k: v for k, v in from_ours(full.state_dict()).items() if not k.startswith(dropped)}
    torch.save(published, tmp_path / "segclip.bin")
    with pytest.warns(UserWarning, match=r"has no vis_mae_decoder.* \(used in training only\): loaded for "
                                         r"inference; training from it starts those parts fresh") as w:
        model = build("segclip-tiny", weights=tmp_path / "segclip.bin")
    assert len(w) == 1
    keep = [k for k in full.state_dict() if not k.startswith(("decoder.", "mae_blocks.", "reconstruct."))]
    assert all(torch.equal(model.state_dict()[k], full.state_dict()[k]) for k in keep)


# --- item 15: offline first use ----------------------------------------------------------------
@pytest.mark.slow      # a fresh interpreter per case
@pytest.mark.parametrize("env", [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}])
def test_offline_first_use_is_one_attempt_and_one_line(ck, tmp_path, env):
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "HF_HUB_OFFLINE"}
    src = str(Path(vocabseg.__file__).parents[1])
    clean.update(env, VOCABSEG_HOME=str(tmp_path / "home"), PYTHONPATH=src)
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vocabseg.cli", "segment", str(ck / "a.png"), "--model",
                        "maskclip-vit-b16", "--labels", LABELS, "--out", str(tmp_path / "o")],
                       env=clean, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - start < 40                        # a sanity bound: no retries with back-off
    msg = one_line(p.stderr)
    assert p.returncode == 2 and msg.startswith("CLIP weights ViT-B-16/openai are not downloaded yet: ")
    assert msg.endswith("or pass a local file with --clip-weights PATH")


def test_weights_folder_that_cannot_be_written_is_one_line(ck, tmp_path, capsys, monkeypatch):
    import vocabseg.hub
    monkeypatch.setattr(vocabseg.hub, "unreachable", lambda url: None)      # as if online
    home = tmp_path / "home"
    home.mkdir()
    (home / "weights").write_text("")                 # cannot hold downloads, root or not
    monkeypatch.setenv("VOCABSEG_HOME", str(home))
    code, _, err = segment(capsys, ck, tmp_path, "--model", "san-vit-b16")
    assert code == 2 and one_line(err).startswith(
        f"model san-vit-b16 needs san_vit_b_16.pth, which cannot be saved under {home / 'weights'} (")


# --- smaller ones ---------------------------------------------------------------------------------
def test_unknown_model_suggests_close_names(ck, tmp_path, capsys):
    code, _, err = segment(capsys, ck, tmp_path, "--model", "san-vit-b61")
    assert code == 2 and one_line(err).startswith("unknown model 'san-vit-b61'; did you mean san-vit-b16")


@pytest.mark.slow      # a fresh interpreter
def test_loading_a_checkpoint_prints_no_random_init_warning(ck):
    """Nothing on stderr, and no root log handler left behind (it would print every library's
    warnings, e.g. the Hub's retries, a second time)."""
    code = ("import logging; from vocabseg.registry import load_checkpoint; "
            f"load_checkpoint({str(ck / 'san-tiny')!r}); print(len(logging.getLogger().handlers))")
    env = {**os.environ, "PYTHONPATH": str(Path(vocabseg.__file__).parents[1])}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stderr == "" and p.stdout == "0\n"


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        folder = save_checkpoint(get_spec("maskclip-tiny").build(), tmp_path / "ck")
        atomic_write(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*folder.iterdir(), tmp_path / "x.txt"]}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "x.txt": 0o644}


def test_nested_writers_of_one_file_do_not_clash(tmp_path):
    """Two writers of one path in one process (demo threads) each get their own temporary file."""
    target = tmp_path / "entry.pt"

    def outer(f):
        f.write(b"outer")
        atomic_write(target, b"inner")               # another thread finishing meanwhile
    atomic_write(target, outer)
    assert target.read_bytes() == b"outer" and [p.name for p in tmp_path.iterdir()] == ["entry.pt"]
