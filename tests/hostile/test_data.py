"""Hostile and careless inputs to the data side: benchmark folders with files missing or
damaged, `vocabseg eval` arguments, vocabulary strings and files, prompt templates.
Each test is one case; a CLI mistake must end with one `vocabseg eval: ...` line."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st
from PIL import Image

from vocabseg.cli import main as cli_main
from vocabseg.data import get_dataset
from vocabseg.errors import VocabularyError
from vocabseg.testing import write_benchmark
from vocabseg.vocab import MAX_NAME_CHARS, Vocabulary

VOC20_LABELS = "VOC2012/annotations_detectron2/val"


@pytest.fixture
def voc(tmp_path):
    """A 3-image voc20 / voc21 split; returns (root, [image stems])."""
    root = tmp_path / "ds"
    truth = write_benchmark("voc20", root, num_images=3)
    return root, [t["image_id"] for t in truth]


def _eval(capsys, *args, model="maskclip-tiny"):
    """Run `vocabseg eval` in-process -> (exit code, stdout, stderr)."""
    code = cli_main(["eval", "--model", model, "--templates", "single", "--no-progress", "--workers", "0", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    assert err.startswith("vocabseg eval: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- item 5: a partial split --------------------------------------------------------------------
def test_eval_missing_label_is_an_error_naming_it(voc, capsys):
    root, stems = voc
    (root / VOC20_LABELS / f"{stems[1]}.png").unlink()
    code, out, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), model="no-such-model")
    assert code == 2 and out == ""          # refused before the model is looked up
    assert _one_line(err) == (
        f"vocabseg eval: error: dataset 'voc20' (val) under {root} is incomplete: 1 of its 3 images lacks a file "
        f"(1 missing: {VOC20_LABELS}/{stems[1]}.png). Restore them, or pass --allow-missing "
        "(Python: get_dataset(..., allow_missing=True)) to use the 2 complete images\n")


def test_eval_allow_missing_counts_the_skipped_images(voc, capsys, tmp_path):
    root, stems = voc
    (root / VOC20_LABELS / f"{stems[1]}.png").unlink()
    code, out, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--allow-missing",
                           "--out", str(tmp_path / "out"))
    assert code == 0
    assert out.splitlines()[0].startswith("voc20 (2 images, 1 skipped for a missing file, ")
    result = json.loads((tmp_path / "out/eval_maskclip-tiny_voc20.json").read_text())
    assert (result["images"], result["skipped"]) == (2, 1)


def test_missing_image_of_a_listed_voc21_item_is_named(voc):
    root, stems = voc
    (root / f"VOC2012/JPEGImages/{stems[1]}.jpg").unlink()     # the middle one (first and last were checked)
    with pytest.raises(FileNotFoundError, match=f"1 missing: VOC2012/JPEGImages/{stems[1]}.jpg"):
        get_dataset("voc21", root=root)


def test_many_missing_files_show_the_first_three_and_the_count(tmp_path):
    write_benchmark("ade150", tmp_path, num_images=6)
    ds = get_dataset("ade150", root=tmp_path)
    for img, _ in ds.files[:5]:
        img.unlink()
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("ade150", root=tmp_path)
    shown = ", ".join(str(img.relative_to(tmp_path)) for img, _ in ds.files[:3])
    assert f"5 of its 6 images lack a file (5 missing: {shown} and 2 more)" in str(e.value)
    assert len(get_dataset("ade150", root=tmp_path, allow_missing=True)) == 1


def test_eval_allow_missing_with_nothing_complete_is_an_error(voc, capsys):
    root, stems = voc
    for t in stems:
        (root / VOC20_LABELS / f"{t}.png").unlink()
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--allow-missing")
    assert code == 2 and "incomplete: 3 of its 3 images lack a file" in _one_line(err)


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_garbage_image_names_the_file(voc, capsys, workers):
    root, stems = voc
    bad = root / f"VOC2012/JPEGImages/{stems[2]}.jpg"
    bad.write_bytes(b"this is not a JPEG")
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--workers", str(workers))
    assert code == 2
    assert _one_line(err).startswith(f"vocabseg eval: error: {bad}: cannot read this voc20 image (cannot identify")


def test_eval_truncated_label_names_the_file(voc, capsys):
    root, stems = voc
    bad = root / VOC20_LABELS / f"{stems[0]}.png"
    bad.write_bytes(bad.read_bytes()[:60])
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--workers", "1")
    assert code == 2 and _one_line(err).startswith(f"vocabseg eval: error: {bad}: cannot read this voc20 label (")


# --- further hostile data --------------------------------------------------------------------------
def test_eval_label_value_beyond_the_classes_names_the_file(voc, capsys):
    root, stems = voc
    path = root / VOC20_LABELS / f"{stems[0]}.png"
    arr = np.array(Image.open(path))
    arr[0, 0] = 37                               # voc20 has classes 0..19 and ignore 255
    Image.fromarray(arr).save(path)
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root))
    assert code == 2
    assert _one_line(err) == f"vocabseg eval: error: {path}: label value 37 is not a voc20 class (0..19) " \
                             "nor its ignore value 255\n"


def test_label_value_beyond_the_classes_is_not_folded_into_a_subset(voc):
    """A few-class vocabulary remaps labels; a bad value used to be clamped into the last class."""
    from vocabseg.engine.evaluation.subset import with_vocabulary
    from vocabseg.data.benchmarks import DatasetError
    root, stems = voc
    path = root / VOC20_LABELS / f"{stems[0]}.png"
    arr = np.array(Image.open(path))
    arr[:] = 40
    Image.fromarray(arr).save(path)
    ds = with_vocabulary(get_dataset("voc20", root=root), Vocabulary.parse("cat; dog"))
    with pytest.raises(DatasetError, match="label value 40 is not a voc20 class"):
        ds[0]


def test_eval_label_of_another_size_than_its_image(voc, capsys):
    root, stems = voc
    path = root / VOC20_LABELS / f"{stems[1]}.png"
    Image.fromarray(np.array(Image.open(path))[:40, :50]).save(path)
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root))
    assert code == 2
    assert _one_line(err) == f"vocabseg eval: error: {path}: label is 40x50 (HxW), its image {stems[1]}.jpg 48x64\n"


def test_eval_empty_split(tmp_path, capsys):
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation").mkdir(parents=True)
    code, _, err = _eval(capsys, "--dataset", "ade150", "--root", str(tmp_path), model="no-such-model")
    assert code == 2 and "not found under" in _one_line(err) and "validation/*.png" in err


def test_eval_unknown_dataset_suggests_close_names(voc, capsys):
    code, _, err = _eval(capsys, "--dataset", "ade15", model="no-such-model")
    assert code == 2 and _one_line(err).startswith(
        "vocabseg eval: error: unknown dataset 'ade15'; did you mean ade150? known: voc20, voc21")


def test_eval_root_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "datasets.txt"
    f.write_text("x")
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(f), model="no-such-model")
    assert code == 2 and _one_line(err) == f"vocabseg eval: error: the datasets root {f} is a file, not a folder\n"


def test_eval_out_an_existing_file_is_refused_before_the_model_loads(voc, tmp_path, capsys):
    root, _ = voc
    out = tmp_path / "results"
    out.write_text("my notes")
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--out", str(out), model="no-such-model")
    assert code == 2 and _one_line(err) == f"vocabseg eval: error: --out {out} is a file, not a folder\n"
    assert out.read_text() == "my notes"


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_eval_limit_zero_or_negative(voc, capsys, limit):
    root, _ = voc
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--limit", limit)
    assert code == 2 and _one_line(err) == "vocabseg eval: error: --limit must be at least 1\n"


# --- vocabularies and templates ----------------------------------------------------------------------
def test_synonym_repeated_within_a_class_is_kept_once():
    """FC-CLIP's published ADE-150 list repeats "kitchen range" in one class: a class scores
    the max over its synonyms, so the repeat changes nothing and is kept once."""
    v = Vocabulary.parse("stove, kitchen range, Kitchen Range, cooking stove, kitchen range; cat")
    assert v.classes == (("stove", "kitchen range", "cooking stove"), ("cat",))
    assert v.synonym_index.tolist() == [0, 0, 0, 1]


def test_name_in_two_classes_stays_an_error():
    with pytest.raises(VocabularyError, match="^name 'Cat' appears in classes 0 and 2$"):
        Vocabulary.parse("cat; dog; Cat")


def test_vocabulary_file_with_a_byte_order_mark_and_crlf(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_bytes("\ufeffcat, kitty\r\ndog\r\n\r\nsofa\r\n".encode("utf-8"))
    assert Vocabulary.from_file(f).classes == (("cat", "kitty"), ("dog",), ("sofa",))


def test_vocabulary_file_not_utf8(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_bytes("caf\xe9\nchien\n".encode("latin-1"))
    with pytest.raises(VocabularyError) as e:
        Vocabulary.from_file(f)
    assert str(e.value) == f"vocabulary file {f} is not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8"


def test_vocabulary_of_100k_classes_is_refused_in_one_line():
    text = "; ".join(f"class {i}" for i in range(100_000))
    with pytest.raises(VocabularyError) as e:
        Vocabulary.parse(text)
    assert str(e.value) == "the vocabulary has 100000 classes; at most 65536 (label maps are 16-bit PNGs)"
    assert len(Vocabulary.parse("; ".join(f"c{i}" for i in range(65536)))) == 65536


def test_class_name_with_nothing_visible_is_refused():
    with pytest.raises(VocabularyError, match=r"^class 1 has a name with nothing visible in it: '\\u200b'$"):
        Vocabulary.parse("cat; \u200b; dog")


def test_empty_pieces_between_separators_are_skipped():
    assert Vocabulary.parse(" ; cat ,, ; ,dog,; ;\n;").classes == (("cat",), ("dog",))


def test_class_names_with_braces_or_percent_are_encoded_literally():
    from vocabseg.registry import get_spec
    model = get_spec("maskclip-tiny").build()
    enc = model.text_encoder("single")
    names = ["{}", "%s", "{0}", "cat {x}"]
    got = enc(Vocabulary.parse("; ".join(names)))
    fresh = enc.plain_prompt_features([f"a photo of a {n}." for n in names], lambda n: None)
    assert torch_allclose(got, fresh)


def torch_allclose(a, b):
    return torch.allclose(a, torch.nn.functional.normalize(b, dim=-1), atol=1e-5)


def test_templates_as_a_list_equal_the_named_set():
    """The docstring allows a list of templates; it used to fail with `unhashable type: 'list'`."""
    import vocabseg
    seg = vocabseg.load("maskclip-tiny")
    vocab = Vocabulary.parse("cat; dog, puppy")
    assert torch_allclose(seg.text(vocab, templates=["a photo of a {}."]), seg.text(vocab, templates="single"))
    assert torch_allclose(seg.text(vocab, templates=("a photo of a {}.",)), seg.text(vocab, templates="single"))


@pytest.mark.parametrize("bad", [["a photo of a cat"], ["a {} and a {}"], ["a {0}"], ["a {name} {}"], ["a {"], []])
def test_template_without_exactly_one_placeholder_is_one_clear_error(bad):
    import vocabseg
    seg = vocabseg.load("maskclip-tiny")
    with pytest.raises(VocabularyError) as e:
        seg.text(Vocabulary.parse("cat"), templates=bad)
    assert "\n" not in str(e.value)
    assert (str(e.value).startswith(f"template {bad[0]!r} must hold '{{}}' exactly once") if bad
            else str(e.value) == "templates must be a set name or a non-empty list of strings, got []")


# --- property-based: the vocabulary parser ------------------------------------------------------------
_PIECE = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
_SEP = st.sampled_from([";", ",", "\n", "\r\n", "\r", " ", "  ", "\t", "\\,", "\\", "\ufeff", "#", "3:", ":"])
_TEXT = st.lists(st.one_of(_PIECE, _SEP, st.sampled_from(["cat", "Cat", "dog", "x" * 201])), max_size=14).map("".join)
_FEW = settings(max_examples=150, deadline=None)


def _names(piece: str) -> list[str]:
    """Synonyms of one class written independently of vocab.py: split at commas not after a
    backslash, unescape, collapse whitespace, drop empties and repeats (case-insensitive)."""
    out = []
    for raw in re.split(r"(?<!\\),", piece):
        name = " ".join(raw.replace("\\,", ",").split())
        if name and name.lower() not in {n.lower() for n in out}:
            out.append(name)
    return out


def _refusal(classes: list[list[str]]) -> bool:
    """Whether a parse of these classes must be refused (and never silently changed)."""
    names = [n.lower() for c in classes for n in c]
    return (not classes or len(set(names)) < len(names) or any(len(n) > MAX_NAME_CHARS for n in names)
            or any(not any(ch.isprintable() and not ch.isspace() for ch in n) for n in names))


def _check(expected: list[list[str]], make, refuse: bool = False):
    try:
        v = make()
    except VocabularyError as e:
        assert "\n" not in str(e) and (refuse or _refusal(expected)), (str(e), expected)
        return None
    assert not (refuse or _refusal(expected)) and [list(c) for c in v.classes] == expected
    return v


@_FEW
@given(_TEXT)
@example("a\\ , b")       # a name ending in a backslash before a comma: to_string used to glue the two
def test_parse_any_text_is_the_independent_split_or_one_line_refusal(text):
    v = _check([c for c in (_names(p) for p in re.split(r"[;\n]", text)) if c], lambda: Vocabulary.parse(text))
    if v is not None:       # formatting then re-parsing gives the same vocabulary
        assert Vocabulary.parse(v.to_string()).classes == v.classes


@_FEW
@given(_TEXT)
def test_from_file_any_text_is_the_independent_split_or_one_line_refusal(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("vocab") / "classes.txt"
    f.write_bytes(text.encode("utf-8"))
    lines = [ln.strip() for ln in text.removeprefix("\ufeff").splitlines()]
    lines = [re.sub(r"^[0-9]+\s*:", "", ln) for ln in lines if ln and not ln.startswith("#")]
    _check([c for c in (_names(ln) for ln in lines) if c], lambda: Vocabulary.from_file(f),
           refuse="\x00" in text)      # a NUL byte: not a text file


# --- training-free whole-image mode: the references' forward_feature(img, ori_shape) -----------------
TF_METHODS = ("maskclip", "sclip", "clearclip", "naclip")


def _whole_model(method):
    from vocabseg.methods.trainingfree.presets import build
    from vocabseg.methods.trainingfree.settings import TINY
    torch.manual_seed(0)
    return build(method, clip_arch="tiny-vit", clip_weights=None, **{**TINY, "mode": "whole"})


@pytest.mark.parametrize("method", TF_METHODS)
def test_whole_image_mode_resizes_once_and_does_not_pad(method):
    """Published whole path: the resized image, unpadded (the patch grid floors), its grid
    cosines resized once to the original size. vocabseg used to pad (ClearCLIP / MaskCLIP)
    and resize twice (grid -> resized image -> original)."""
    from vocabseg.engine.inference.image import infer
    from vocabseg.protocol import preprocess
    model = _whole_model(method)
    vocab = Vocabulary.parse("cat; dog, puppy; sky")
    text = F.normalize(torch.randn(len(vocab.prompts), 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    image = torch.rand(3, 75, 130)                  # resized to 64 x 111: not a patch multiple
    x = preprocess(image, model.protocol)
    assert tuple(x.shape[-2:]) == (64, 111)
    with torch.no_grad():
        tokens, grid = model.dense_tokens(x)           # no padding: a 4 x 6 grid
        cos = torch.einsum("bnd,sd->bsn", F.normalize(tokens[:, 1:], dim=-1), text).reshape(1, -1, *grid)
        expected = model.finalize(F.interpolate(cos, size=(75, 130), mode="bilinear", align_corners=False), vocab)[0]
    assert grid == (4, 6)
    torch.testing.assert_close(infer(model, image, text, vocab), expected, atol=1e-6, rtol=0)


def test_whole_image_mode_batched_equals_one_by_one():
    from vocabseg.engine.inference.batched import infer_batch
    from vocabseg.engine.inference.image import infer
    model = _whole_model("clearclip")
    vocab = Vocabulary.parse("cat; dog")
    text = F.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    images = [torch.rand(3, 75, 130), torch.rand(3, 75, 130), torch.rand(3, 64, 64)]
    for got, image in zip(infer_batch(model, images, text, vocab, max_crops=2), images):
        torch.testing.assert_close(got, infer(model, image, text, vocab), atol=1e-6, rtol=0)


# --- ClearCLIP's own class lists ------------------------------------------------------------------
CLEARCLIP_VOC20 = ["aeroplane", "bicycle", "bird", "ship", "bottle", "bus", "car", "cat", "chair", "cow", "table",
                   "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def test_clearclip_uses_its_published_voc_and_coco_object_lists(tmp_path):
    """mc-lan/ClearCLIP configs/cls_voc21.txt: "background", single "person", "tvmonitor" —
    not SCLIP's lists (stuff words for background, seven person synonyms, five for the monitor)."""
    from vocabseg.engine.evaluation.evaluate import dataset_vocabulary, model_convention
    from vocabseg.registry import get_spec
    write_benchmark("voc21", tmp_path, num_images=1)
    write_benchmark("coco-object", tmp_path, num_images=1)
    write_benchmark("pc59", tmp_path, num_images=1)
    clear, sclip = get_spec("clearclip-tiny").build(), get_spec("sclip-tiny").build()
    voc21, used = dataset_vocabulary(get_dataset("voc21", root=tmp_path), "auto", model_convention(clear))
    assert used == "clearclip" and voc21.background == 0
    assert [list(c) for c in voc21.classes] == [[n] for n in ["background", *CLEARCLIP_VOC20]]
    voc20, _ = dataset_vocabulary(get_dataset("voc20", root=tmp_path), "auto", model_convention(clear))
    assert voc20.names == CLEARCLIP_VOC20 and voc20.prompts == CLEARCLIP_VOC20
    obj, _ = dataset_vocabulary(get_dataset("coco-object", root=tmp_path), "auto", model_convention(clear))
    assert obj.classes[:2] == (("background",), ("person",)) and len(obj) == 81 and obj.background == 0
    pc59, used = dataset_vocabulary(get_dataset("pc59", root=tmp_path), "auto", model_convention(clear))
    assert used == "clearclip" and pc59 == Vocabulary.from_dataset("pc59:tf")    # identical files: SCLIP's
    sclip_voc21, used = dataset_vocabulary(get_dataset("voc21", root=tmp_path), "auto", model_convention(sclip))
    assert used == "tf" and sclip_voc21.classes[0][:2] == ("sky", "wall")


def test_eval_clearclip_reports_its_own_class_names(tmp_path, capsys):
    write_benchmark("voc21", tmp_path / "ds", num_images=2)
    code, _, err = _eval(capsys, "--dataset", "voc21", "--root", str(tmp_path / "ds"), "--out", str(tmp_path),
                         model="clearclip-tiny")
    assert code == 0, err
    result = json.loads((tmp_path / "eval_clearclip-tiny_voc21.json").read_text())
    assert result["vocabulary"] == "clearclip"
    assert list(result["per_class_iou"]) == ["background", *CLEARCLIP_VOC20]


# --- more careless inputs ----------------------------------------------------------------------------
def test_eval_negative_workers_is_refused_before_the_model_loads(voc, capsys):
    root, _ = voc
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--workers", "-1", model="no-such-model")
    assert code == 2 and _one_line(err) == "vocabseg eval: error: --workers must be 0 (load in this process) or more\n"


def test_eval_unknown_split(voc, capsys):
    root, _ = voc
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--split", "test", model="no-such-model")
    assert code == 2 and _one_line(err) == "vocabseg eval: error: dataset 'voc20' has splits train, val, not 'test'\n"


def test_eval_rgb_label_png_names_the_file(voc, capsys):
    root, stems = voc
    path = root / VOC20_LABELS / f"{stems[0]}.png"
    Image.open(path).convert("RGB").save(path)            # colour-coded labels saved as RGB
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root))
    assert code == 2 and _one_line(err).startswith(f"vocabseg eval: error: {path}: cannot read this voc20 label (")
    assert "expected a single-channel label image, got mode RGB" in err


def test_vocabulary_list_with_a_non_string_is_one_clear_error():
    with pytest.raises(VocabularyError, match=r"^a vocabulary list holds class-name strings, got 3$"):
        Vocabulary.resolve(["cat", 3])
    with pytest.raises(VocabularyError, match="^the vocabulary is empty"):
        Vocabulary.resolve([])


def test_dataset_vocabulary_name_cannot_reach_other_files(tmp_path):
    """`--dataset-vocab`, `Vocabulary.from_dataset` and the demo's benchmark list take a
    benchmark name: a path such as ../../x.txt used to read any .txt file on the machine."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    traversal = "../" * 30 + str(secret)[1:-4]
    for name in (traversal, f"voc21:{traversal}"):
        with pytest.raises(VocabularyError, match="^unknown dataset vocabulary"):
            Vocabulary.from_dataset(name)
    assert Vocabulary.resolve(traversal).names == [traversal]      # read as one typed class name, not a file


def test_prepare_root_that_is_a_file(tmp_path, capsys):
    from vocabseg.testing import write_raw
    write_raw("voc", tmp_path / "raw")
    f = tmp_path / "datasets.txt"
    f.write_text("x")
    code = cli_main(["prepare", "voc", str(tmp_path / "raw"), "--root", str(f)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"vocabseg prepare: error: the datasets root {f} is a file, not a folder\n"
    assert f.read_text() == "x"


def test_prepare_over_a_file_where_a_folder_goes(tmp_path, capsys):
    from vocabseg.testing import write_raw
    write_raw("voc", tmp_path / "raw")
    blocker = tmp_path / "ds/VOC2012/JPEGImages"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("mine")
    code = cli_main(["prepare", "voc", str(tmp_path / "raw"), "--root", str(tmp_path / "ds")])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"vocabseg prepare: error: {blocker} exists and is not a folder: "
                                 "move it away and prepare again\n")
    assert blocker.read_text() == "mine"


def test_panoptic_split_with_a_png_missing_is_named(tmp_path):
    write_benchmark("coco-panoptic", tmp_path, num_images=3)
    ds = get_dataset("coco-panoptic", root=tmp_path)
    gone = ds.files[1][1]
    gone.unlink()
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("coco-panoptic", root=tmp_path)
    assert f"1 of its 3 images lacks a file (1 missing: {gone.relative_to(tmp_path)})" in str(e.value)
    partial = get_dataset("coco-panoptic", root=tmp_path, allow_missing=True)
    assert (len(partial), partial.skipped) == (2, 1)
    assert [a["file_name"] for a in partial.annotations] == [b.name for _, b in partial.files]


def test_eval_garbage_panoptic_json(tmp_path, capsys):
    write_benchmark("coco-panoptic", tmp_path, num_images=1)
    js = tmp_path / "coco/annotations/panoptic_val2017.json"
    js.write_text("{not json")
    code, _, err = _eval(capsys, "--dataset", "coco-panoptic", "--root", str(tmp_path), model="no-such-model")
    assert code == 2 and _one_line(err).startswith(
        f"vocabseg eval: error: {js}: not a COCO-panoptic JSON file (JSONDecodeError: Expecting property name")


def test_eval_split_list_that_is_not_text(voc, capsys):
    root, _ = voc
    lst = root / "VOC2012/ImageSets/Segmentation/val.txt"
    lst.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = _eval(capsys, "--dataset", "voc21", "--root", str(root), model="no-such-model")
    assert code == 2 and _one_line(err).startswith(f"vocabseg eval: error: {lst}: cannot read this voc21 split list (")
