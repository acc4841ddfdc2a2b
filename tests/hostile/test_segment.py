"""Hostile and careless inputs to `vocabseg segment` (issue 19: items 2, 12, 13 and new cases).

A user mistake is exit 2 and one `vocabseg segment: error: ...` line; an image that
cannot be read or written is one line, the others go on, exit 1 at the end; a file
vocabseg did not write for the same image is never replaced without --overwrite.
"""
import errno
import json
import os
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import vocabseg.api
from vocabseg.cli import main
from vocabseg.protocol import Protocol

MANIFEST = ".vocabseg-manifest.json"     # documented name of the list of files vocabseg wrote in --out

LABELS = ["--labels", "a; b", "--model", "san-tiny"]


def _image(path, h=24, w=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _segment(capsys, *args):
    """(exit status, error lines) of `vocabseg segment ARGS`."""
    rc = main(["segment", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [line for line in err.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def small_san():
    """san-tiny at a short side of 64 (not 640): the same code paths, seconds faster per image."""
    model = vocabseg.api.load_model("san-tiny")
    model.protocol = Protocol(short_side=64, max_side=256, mode="whole", size_divisibility=32, resize="pil")
    return model


@pytest.fixture(autouse=True)
def _fast(monkeypatch, small_san, tmp_path_factory):
    monkeypatch.setenv("VOCABSEG_HOME", str(tmp_path_factory.getbasetemp() / "segment-home"))   # text cache shared
    real = vocabseg.api.load_model
    monkeypatch.setattr(vocabseg.api, "load_model", lambda name, **kw: small_san if name == "san-tiny" else real(name, **kw))


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the check must come before."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")
    monkeypatch.setattr(vocabseg.api, "load_model", refuse)


# --- item 2: never overwrite a file vocabseg did not write ---------------------------------------------

def test_users_file_in_out_is_not_overwritten(tmp_path, capsys, no_model):
    x3 = tmp_path / "x3"
    _image(x3 / "a.png")
    (x3 / "a_overlay.png").write_bytes(b"the user's own file")
    rc, errors = _segment(capsys, x3 / "a.png", "--out", x3, *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: {x3}/a_overlay.png was not written by vocabseg; "
                                  "use --overwrite to replace, or another --out"]
    assert (x3 / "a_overlay.png").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in x3.iterdir()) == ["a.png", "a_overlay.png"]


def test_users_image_named_like_an_output_is_not_overwritten(tmp_path, capsys, no_model):
    x3 = tmp_path / "x3"
    _image(x3 / "a.png")
    _image(x3 / "a_labels.png", seed=1)
    before = (x3 / "a_labels.png").read_bytes()
    rc, errors = _segment(capsys, x3, "--out", x3, *LABELS)
    assert rc == 2 and errors[0].startswith(f"vocabseg segment: error: {x3}/a_labels.png was not written by vocabseg")
    assert (x3 / "a_labels.png").read_bytes() == before


def test_overwrite_replaces_users_file(tmp_path, capsys):
    _image(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_labels.png").write_bytes(b"mine")
    rc, errors = _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "out", "--overwrite", *LABELS)
    assert rc == 0 and errors == []
    assert np.array(Image.open(tmp_path / "out" / "a_labels.png")).shape == (24, 32)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    assert manifest["a_labels.png"]["source"] == str((tmp_path / "a.png").resolve())


def test_rerun_of_same_command_needs_no_overwrite(tmp_path, capsys):
    _image(tmp_path / "in" / "a.png")
    args = [tmp_path / "in", "--out", tmp_path / "out", *LABELS]
    assert _segment(capsys, *args) == (0, [])
    assert _segment(capsys, *args, "--labels", "c; d; e") == (0, [])
    assert json.loads((tmp_path / "out" / "a.json").read_text())["vocabulary"] == "c; d; e"


def test_hand_edited_output_is_not_overwritten(tmp_path, capsys):
    _image(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), *LABELS]) == 0
    (tmp_path / "o" / "a_labels.png").write_bytes(b"labels corrected by hand")
    rc, errors = _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "o", *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: {tmp_path}/o/a_labels.png was not written by vocabseg; "
                                  "use --overwrite to replace, or another --out"]
    assert (tmp_path / "o" / "a_labels.png").read_bytes() == b"labels corrected by hand"


def test_rerun_into_input_folder_skips_own_outputs(tmp_path, capsys):
    x3 = tmp_path / "x3"
    _image(x3 / "a.png")
    assert _segment(capsys, x3, "--out", x3, *LABELS) == (0, [])
    rc = main(["segment", str(x3), "--out", str(x3), *LABELS])
    err = capsys.readouterr().err
    assert rc == 0 and "skipping 2 file(s) in the input folder(s) that are vocabseg's own outputs or hidden" in err
    assert "1 of 1 images" in err
    assert sorted(p.name for p in x3.iterdir()) == [MANIFEST, "a.json", "a.png", "a_labels.png", "a_overlay.png"]


def test_other_image_with_same_name_is_not_replaced_across_runs(tmp_path, capsys):
    _image(tmp_path / "a" / "x.png")
    _image(tmp_path / "b" / "x.png", seed=1)
    out = tmp_path / "out"
    assert _segment(capsys, tmp_path / "a" / "x.png", "--out", out, *LABELS) == (0, [])
    before = (out / "x_labels.png").read_bytes()
    rc, errors = _segment(capsys, tmp_path / "b" / "x.png", "--out", out, *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: {out}/x_labels.png holds vocabseg's result for "
                                  f"{(tmp_path / 'a' / 'x.png').resolve()}, not {tmp_path}/b/x.png (and 2 more); "
                                  "use --overwrite to replace, or another --out"]
    assert (out / "x_labels.png").read_bytes() == before


def test_json_records_source_path(tmp_path, capsys):
    _image(tmp_path / "a.png")
    assert _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "o", *LABELS) == (0, [])
    assert json.loads((tmp_path / "o" / "a.json").read_text())["source"] == str((tmp_path / "a.png").resolve())


def test_same_name_in_two_folders_gets_distinct_names(tmp_path, capsys):
    _image(tmp_path / "a" / "x.png")
    _image(tmp_path / "b" / "x.png", h=30, seed=1)
    rc = main(["segment", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), *LABELS])
    assert rc == 0 and f"{tmp_path}/b/x.png is written as b_x* (another input has the same name)" \
        in capsys.readouterr().err
    assert np.array(Image.open(tmp_path / "o" / "x_labels.png")).shape == (24, 32)
    assert np.array(Image.open(tmp_path / "o" / "b_x_labels.png")).shape == (30, 32)
    assert json.loads((tmp_path / "o" / "b_x.json").read_text())["source"] == str(tmp_path / "b" / "x.png")


def test_same_stem_different_extension_gets_distinct_names(tmp_path, capsys):
    _image(tmp_path / "in" / "x.png")
    _image(tmp_path / "in" / "x.jpg", h=30)
    rc = main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *LABELS])
    assert rc == 0 and "x.png is written as x_png* (another input has the same name)" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "x.json").read_text())["height"] == 30
    assert json.loads((tmp_path / "o" / "x_png.json").read_text())["height"] == 24


def test_names_differing_only_in_case_get_distinct_names(tmp_path, capsys):
    _image(tmp_path / "a" / "X.png")
    _image(tmp_path / "b" / "x.png")
    assert main(["segment", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), *LABELS]) == 0
    assert {"X.json", "b_x.json"} <= {p.name for p in (tmp_path / "o").iterdir()}   # one file on macOS / Windows


def test_names_differing_only_in_accent_composition_get_distinct_names(tmp_path, capsys):
    _image(tmp_path / "a" / "caf\u00e9.png")                  # é composed (Linux) and decomposed (macOS)
    _image(tmp_path / "b" / "cafe\u0301.png")
    assert main(["segment", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), *LABELS]) == 0
    assert {"caf\u00e9.json", "b_cafe\u0301.json"} <= {p.name for p in (tmp_path / "o").iterdir()}


# --- item 12: --out checked first; one image's write failure does not stop the others -----------------

def test_out_is_an_existing_file(tmp_path, capsys, no_model):
    _image(tmp_path / "a.png")
    (tmp_path / "f").write_text("keep")
    rc, errors = _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "f", *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: --out {tmp_path}/f is a file, not a folder"]
    assert (tmp_path / "f").read_text() == "keep"


def test_out_under_a_file(tmp_path, capsys, no_model):
    _image(tmp_path / "a.png")
    (tmp_path / "f").write_text("keep")
    rc, errors = _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "f" / "sub", *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: cannot write into --out {tmp_path}/f/sub: Not a directory"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_out_not_writable(tmp_path, capsys, no_model, monkeypatch, code):
    _image(tmp_path / "a.png")
    (tmp_path / "o").mkdir()
    real = type(tmp_path).write_bytes

    def write_bytes(self, data):        # what a read-only mount or a folder without write permission does
        if self.parent == tmp_path / "o":
            raise OSError(code, os.strerror(code), str(self))
        return real(self, data)
    monkeypatch.setattr(type(tmp_path), "write_bytes", write_bytes)
    rc, errors = _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "o", *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: cannot write into --out {tmp_path}/o: {os.strerror(code)}"]


def test_write_failure_of_one_image_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    import vocabseg.results as results
    for n in "abc":
        _image(tmp_path / "in" / f"{n}.png")
    real = results._save_png

    def save_png(im, path):
        if path.name == "b_overlay.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(im, path)
    monkeypatch.setattr(results, "_save_png", save_png)
    rc = main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *LABELS])
    err = capsys.readouterr().err
    assert rc == 1 and "2 of 3 images written" in err and "(1 failed)" in err
    assert (f"vocabseg segment: error: cannot write the outputs of {tmp_path}/in/b.png: No space left on device "
            f"({tmp_path}/o/b_overlay.png)") in err.splitlines()
    assert (tmp_path / "o" / "c.json").is_file() and not (tmp_path / "o" / "b_overlay.png").exists()
    monkeypatch.setattr(results, "_save_png", real)         # the half-written b is vocabseg's: a rerun completes it
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *LABELS]) == 0


# --- item 13: extreme aspect ratios and bad --labels-file -----------------------------------------------

@pytest.mark.parametrize("h,w", [(1, 20000), (20000, 1)])
def test_extreme_aspect_ratio_is_segmented(tmp_path, capsys, h, w):
    Image.new("RGB", (w, h), (10, 200, 30)).save(tmp_path / "thin.png")
    assert _segment(capsys, tmp_path / "thin.png", "--out", tmp_path / "o", *LABELS) == (0, [])
    assert np.array(Image.open(tmp_path / "o" / "thin_labels.png")).shape == (h, w)


@pytest.mark.parametrize("content,msg", [
    (b"caf\xe9\nroad\n", "vocabulary file {f} is not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\xd0\x01", "vocabulary file {f} is not UTF-8 text (byte 0xd0 at offset 10); "
                                                 "save it as UTF-8"),
    (b"cat\x00dog\n", "vocabulary file {f} holds NUL bytes: not a text file"),
    (b"", "vocabulary file {f} is empty: write one class per line"),
    (b"# only a comment\n", "{f}: the vocabulary file has no class names"),
    (None, "vocabulary file {f} is a folder, not a file"),
], ids=["latin1", "binary", "nul", "empty", "comments-only", "folder"])
def test_bad_labels_file(tmp_path, capsys, no_model, content, msg):
    f = tmp_path / "classes.txt"
    f.mkdir() if content is None else f.write_bytes(content)
    rc, errors = _segment(capsys, _image(tmp_path / "a.png"), "--labels-file", f, "--out", tmp_path / "o")
    assert rc == 2 and errors == ["vocabseg segment: error: " + msg.format(f=f)]


def test_missing_labels_file(tmp_path, capsys, no_model):
    rc, errors = _segment(capsys, _image(tmp_path / "a.png"), "--labels-file", tmp_path / "no.txt", "--out", tmp_path / "o")
    assert rc == 2 and errors == [f"vocabseg segment: error: vocabulary file not found: {tmp_path}/no.txt"]


@pytest.mark.parametrize("data", [b"\xef\xbb\xbfcat\ndog\n", "cat\ndog\n".encode("utf-16")], ids=["utf8-bom", "utf16"])
def test_labels_file_from_a_windows_editor(tmp_path, capsys, data):
    (tmp_path / "classes.txt").write_bytes(data)
    rc, _ = _segment(capsys, _image(tmp_path / "a.png"), "--labels-file", tmp_path / "classes.txt",
                     "--model", "san-tiny", "--out", tmp_path / "o")
    assert rc == 0 and json.loads((tmp_path / "o" / "a.json").read_text())["vocabulary"] == "cat; dog"


# --- inputs and options checked before the model loads ----------------------------------------------------

def test_unreadable_inputs_are_reported_before_model_loads(tmp_path, capsys, no_model):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rc = main(["segment", str(tmp_path / "bad.png"), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o"),
               *LABELS])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and err == [
        f"vocabseg segment: error: cannot read image {tmp_path}/bad.png: not an image file or a format Pillow cannot read",
        f"vocabseg segment: error: image not found: {tmp_path}/missing.jpg",
        "vocabseg segment: none of the 2 images can be segmented; nothing written"]


@pytest.mark.parametrize("args,msg", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
    (["--tta", "--task", "panoptic"], "--tta applies to --task semantic only"),
    (["--batch-size", "2", "--task", "panoptic"], "--batch-size works for the semantic task without --show-groups "
                                                  "or --tta (use --batch-size 1)"),
], ids=["batch0", "batch-negative", "tta-panoptic", "batch-panoptic"])
def test_bad_options_are_refused_before_model_loads(tmp_path, capsys, no_model, args, msg):
    rc, errors = _segment(capsys, _image(tmp_path / "a.png"), "--out", tmp_path / "o", *LABELS, *args)
    assert rc == 2 and errors == ["vocabseg segment: error: " + msg]


# --- further hostile inputs -------------------------------------------------------------------------------

def test_input_folder_with_subfolder_hidden_and_non_images(tmp_path, capsys):
    d = tmp_path / "in"
    _image(d / "a.png")
    _image(d / "sub" / "b.png")
    _image(d / "._a.png")                                   # macOS resource-fork twin
    (d / "notes.txt").write_text("x")
    (d / "folder.png").mkdir()
    assert _segment(capsys, d, "--out", tmp_path / "o", *LABELS) == (0, [])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [MANIFEST, "a.json", "a_labels.png", "a_overlay.png"]


def test_symlink_loop_in_input_folder(tmp_path, capsys):
    d = tmp_path / "in"
    _image(d / "a.png")
    os.symlink(d / "loop.png", d / "loop.png")
    os.symlink(d, d / "self")
    assert _segment(capsys, d, "--out", tmp_path / "o", *LABELS) == (0, [])
    assert (tmp_path / "o" / "a_labels.png").is_file()


def test_same_file_given_twice_is_segmented_once(tmp_path, capsys):
    a = _image(tmp_path / "a.png")
    rc = main(["segment", str(a), str(tmp_path), str(tmp_path / "." / "a.png"), "--out", str(tmp_path / "o"), *LABELS])
    err = capsys.readouterr().err
    assert rc == 0 and "1 of 1 images" in err and f"{tmp_path}/a.png is given more than once; segmenting it once" in err
    assert not list((tmp_path / "o").glob("*_2*"))


def test_file_names_with_unicode_spaces_and_newline(tmp_path, capsys):
    names = ["café ☕ photo.png", "two  spaces .jpg", "line\nbreak.png"]
    for n in names:
        _image(tmp_path / "in" / n)
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *LABELS]) == 0
    for n in names:
        stem = n.rsplit(".", 1)[0]
        assert json.loads((tmp_path / "o" / f"{stem}.json").read_text())["source"] == str(tmp_path / "in" / n)


def test_too_long_file_name_is_shortened(tmp_path, capsys):
    name = "é" * 120 + ".png"                               # 244 bytes: "_overlay.png" would pass NAME_MAX
    _image(tmp_path / "in" / name)
    rc = main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *LABELS])
    err = capsys.readouterr().err
    assert rc == 0 and "is written as " in err and "(its name is too long)" in err
    written = [p.name for p in (tmp_path / "o").iterdir() if p.name != MANIFEST]
    assert len(written) == 3 and all(len(n.encode()) <= 239 for n in written)


def test_out_inside_input_folder(tmp_path, capsys):
    _image(tmp_path / "in" / "a.png")
    args = [tmp_path / "in", "--out", tmp_path / "in" / "out", *LABELS]
    assert _segment(capsys, *args) == (0, [])
    assert _segment(capsys, *args) == (0, [])
    assert sorted(p.name for p in (tmp_path / "in" / "out").iterdir()) == [MANIFEST, "a.json", "a_labels.png",
                                                                          "a_overlay.png"]


def test_corrupt_manifest_protects_existing_files(tmp_path, capsys, no_model):
    _image(tmp_path / "a.png")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a.json").write_text("{}")
    (tmp_path / "o" / MANIFEST).write_bytes(b"\x00garbage")
    rc, errors = _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "o", *LABELS)
    assert rc == 2 and errors[0].startswith(f"vocabseg segment: error: {tmp_path}/o/a.json was not written by vocabseg")


def test_folder_in_the_way_of_an_output(tmp_path, capsys, no_model):
    _image(tmp_path / "a.png")
    (tmp_path / "o" / "a.json").mkdir(parents=True)
    rc, errors = _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "o", "--overwrite", *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: cannot write {tmp_path}/o/a.json: "
                                  "a folder of that name is in the way"]


def test_interrupted_run_leaves_no_half_written_file(tmp_path, capsys, monkeypatch):
    import vocabseg.results as results
    for n in "ab":
        _image(tmp_path / "in" / f"{n}.png")
    real = results._save_png

    def save_png(im, path):
        if path.name == "b_overlay.png":          # Ctrl-C while the PNG encoder is writing
            results.atomic_write(path, lambda f: (f.write(b"\x89PNG half"), (_ for _ in ()).throw(KeyboardInterrupt)))
        real(im, path)
    monkeypatch.setattr(results, "_save_png", save_png)
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *LABELS]) == 130
    left = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert left == [MANIFEST, "a.json", "a_labels.png", "a_overlay.png", "b_labels.png"]
    manifest = json.loads((tmp_path / "o" / MANIFEST).read_text())["files"]
    assert sorted(manifest) == left[1:]                      # what exists is vocabseg's, nothing more
    monkeypatch.setattr(results, "_save_png", real)
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *LABELS]) == 0


def test_show_groups_image_is_written_atomically_and_recorded(tmp_path, capsys, monkeypatch):
    import vocabseg.results as results
    seen = []
    real = results.atomic_write
    monkeypatch.setattr(results, "atomic_write", lambda path, data: seen.append(path.name) or real(path, data))
    _image(tmp_path / "a.png")
    assert _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "o", "--labels", "a; b", "--model",
                    "segclip-tiny", "--show-groups") == (0, [])
    assert "a_groups.png" in seen
    assert "a_groups.png" in json.loads((tmp_path / "o" / MANIFEST).read_text())["files"]


def test_animated_gif_and_multipage_tiff_use_the_first_frame(tmp_path, capsys):
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    assert _segment(capsys, tmp_path / "anim.gif", tmp_path / "pages.tif", "--out", tmp_path / "o", *LABELS) == (0, [])
    for stem in ("anim", "pages"):
        assert json.loads((tmp_path / "o" / f"{stem}.json").read_text())["height"] == 24


def test_fifo_or_device_as_input_does_not_hang(tmp_path, capsys, no_model):
    os.mkfifo(tmp_path / "pipe.png")
    rc = main(["segment", str(tmp_path / "pipe.png"), "/dev/zero", "--out", str(tmp_path / "o"), *LABELS])
    assert rc == 1 and capsys.readouterr().err.splitlines() == [
        f"vocabseg segment: error: cannot read image {tmp_path}/pipe.png: not a regular file",
        "vocabseg segment: error: cannot read image /dev/zero: not a regular file",
        "vocabseg segment: none of the 2 images can be segmented; nothing written"]


def test_out_is_a_dangling_symlink(tmp_path, capsys, no_model):
    os.symlink(tmp_path / "gone", tmp_path / "o")
    rc, errors = _segment(capsys, _image(tmp_path / "a.png"), "--out", tmp_path / "o", *LABELS)
    assert rc == 2 and errors == [f"vocabseg segment: error: --out {tmp_path}/o is a symbolic link to "
                                  f"{tmp_path}/gone, which does not exist"]


def test_out_is_empty(tmp_path, capsys, no_model):
    rc, errors = _segment(capsys, _image(tmp_path / "a.png"), "--out", "", *LABELS)
    assert rc == 2 and errors == ["vocabseg segment: error: --out is empty: give an output folder"]


def test_save_scores_with_panoptic_is_refused(tmp_path, capsys, no_model):
    rc, errors = _segment(capsys, _image(tmp_path / "a.png"), "--out", tmp_path / "o", "--task", "panoptic",
                          "--save-scores", "--labels", "a; b", "--model", "fcclip-tiny")
    assert rc == 2 and errors == ["vocabseg segment: error: --save-scores applies to --task semantic only"]


def test_symlink_in_out_is_replaced_not_followed(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    (tmp_path / "o").mkdir()
    os.symlink(tmp_path / "precious.txt", tmp_path / "o" / "a.json")
    rc, errors = _segment(capsys, _image(tmp_path / "a.png"), "--out", tmp_path / "o", *LABELS)
    assert rc == 2 and errors[0].startswith(f"vocabseg segment: error: {tmp_path}/o/a.json was not written by vocabseg")
    assert _segment(capsys, tmp_path / "a.png", "--out", tmp_path / "o", "--overwrite", *LABELS) == (0, [])
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "o" / "a.json").is_symlink() and json.loads((tmp_path / "o" / "a.json").read_text())


def test_invalid_exif_orientation_is_ignored(tmp_path, capsys):
    im = Image.new("RGB", (32, 24), (9, 9, 9))
    exif = im.getexif()
    exif[0x0112] = 9                                        # orientations are 1..8
    im.save(tmp_path / "e.jpg", exif=exif)
    assert _segment(capsys, tmp_path / "e.jpg", "--out", tmp_path / "o", *LABELS) == (0, [])
    assert json.loads((tmp_path / "o" / "e.json").read_text())["height"] == 24


def test_eval_out_is_checked_before_evaluation(tmp_path, capsys, no_model):
    from vocabseg.testing.synthetic import write_benchmark
    write_benchmark("voc20", tmp_path / "datasets", num_images=2)      # the conftest's $VOCABSEG_DATASETS
    (tmp_path / "f").write_text("keep")
    rc = main(["eval", "--model", "san-tiny", "--dataset", "voc20", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines() == [f"vocabseg eval: error: --out {tmp_path}/f is a file, not a folder"]


def test_planned_names_are_the_names_results_write(tmp_path):
    """The refusal checks the names `outputs.SUFFIXES` plans: they must be what `save` writes."""
    import torch
    from vocabseg.outputs import SCORES, SUFFIXES
    from vocabseg.results import InstanceResult, PanopticResult, SemanticResult
    from vocabseg.vocab import Vocabulary
    v = Vocabulary.parse("a; b")
    results = {
        "semantic": SemanticResult(torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5), v, scores=torch.zeros(2, 4, 5)),
        "panoptic": PanopticResult(torch.ones(4, 5, dtype=torch.int32), [{"id": 1, "category_id": 0, "isthing": False}], v),
        "instance": InstanceResult(torch.ones(1, 4, 5, dtype=torch.bool), torch.zeros(1, dtype=torch.long),
                                   torch.ones(1), v),
    }
    for task, result in results.items():
        written = {p.name for p in result.save(tmp_path / task, "s", source="/x/s.png").values()}
        assert written == {"s" + x for x in SUFFIXES[task] + ((SCORES,) if task == "semantic" else ())}
        assert sorted(p.name for p in (tmp_path / task).iterdir()) == sorted(written)


def test_labels_file_from_process_substitution(tmp_path, capsys):
    r, w = os.pipe()                                        # what bash's <(...) gives: /dev/fd/N, a pipe
    os.write(w, b"cat\ndog\n")
    os.close(w)
    try:
        rc, _ = _segment(capsys, _image(tmp_path / "a.png"), "--labels-file", f"/dev/fd/{r}", "--model", "san-tiny",
                         "--out", tmp_path / "o")
    finally:
        os.close(r)
    assert rc == 0 and json.loads((tmp_path / "o" / "a.json").read_text())["vocabulary"] == "cat; dog"


def test_quoted_wildcard_is_expanded(tmp_path, capsys):
    _image(tmp_path / "in" / "a.png")
    _image(tmp_path / "in" / "b.jpg")
    assert _segment(capsys, tmp_path / "in", "--out", tmp_path / "in", *LABELS) == (0, [])
    rc = main(["segment", str(tmp_path / "in" / "*"), "--out", str(tmp_path / "o"), *LABELS])
    err = capsys.readouterr().err
    assert rc == 0 and "2 of 2 images" in err                # its own outputs in in/ are skipped
    assert {"a.json", "b.json"} <= {p.name for p in (tmp_path / "o").iterdir()}


def test_url_as_input_says_it_is_not_downloaded(tmp_path, capsys, no_model):
    rc = main(["segment", "https://example.com/cat.jpg", "--out", str(tmp_path / "o"), *LABELS])
    assert rc == 1 and capsys.readouterr().err.splitlines()[0] == (
        "vocabseg segment: error: image not found: https:/example.com/cat.jpg "
        "(a URL is not downloaded: save the image and give its path)")


def test_out_with_unexpanded_tilde(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["segment", str(_image(tmp_path / "a.png")), "--out=~/results", *LABELS]) == 0
    assert (tmp_path / "home" / "results" / "a.json").is_file() and not (tmp_path / "~").exists()


@settings(max_examples=60, deadline=None)
@given(files=st.lists(st.tuples(st.sampled_from(["a", "b", "A", "a/b"]),
                                st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
                                        min_size=1, max_size=130),
                                st.sampled_from([".png", ".jpg", ".PNG", ""])), max_size=12))
def test_planned_output_names_never_collide(files):
    from pathlib import Path
    from vocabseg.outputs import SUFFIXES, plan_names
    suffixes = SUFFIXES["semantic"] + ("_scores.npy", "_groups.png")
    paths = [Path("/in") / folder / (name + ext) for folder, name, ext in files]
    stems, _ = plan_names(paths, suffixes)
    names = [unicodedata.normalize("NFC", s + x).casefold() for s in stems for x in suffixes]
    assert len(set(names)) == len(names) and MANIFEST.casefold() not in names
    assert all(len(n.encode()) <= 239 for n in names) and plan_names(paths, suffixes)[0] == stems
