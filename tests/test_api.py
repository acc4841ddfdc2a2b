import pytest
import torch

import vocabseg
from vocabseg.api import Segmenter, load_model
from vocabseg.backbones.clip import WeightsNotFound
from vocabseg.checkpoint import save_checkpoint
from vocabseg.registry import load_checkpoint
from vocabseg.errors import UnknownModel, UserError
from vocabseg.registry import all_specs
from vocabseg.results import SemanticResult

TINY = sorted(n for n, s in all_specs(include_test=True).items() if s.test_only)


def _image(h=70, w=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    torch.manual_seed(0)
    return Segmenter(load_model(request.param), name=request.param)


def test_result_indexes_the_vocabulary_at_the_input_size(tiny):
    r = tiny(_image(), "sky; tree, bush; road")
    assert isinstance(r, SemanticResult)
    assert r.labels.shape == (70, 90) and r.labels.dtype == torch.long
    assert 0 <= int(r.labels.min()) and int(r.labels.max()) < 3
    assert ((r.confidence >= 0) & (r.confidence <= 1)).all()
    assert r.vocabulary.names == ["sky", "tree", "road"]


def test_return_scores_gives_the_map_before_argmax(tiny):
    r = tiny(_image(), "sky; tree; road", return_scores=True)
    assert r.scores.shape == (3, 70, 90)
    assert torch.equal(r.scores.argmax(0), r.labels)


def test_permuting_the_vocabulary_permutes_the_label_ids(tiny, monkeypatch):
    names = ["sky", "tree", "road", "car", "person"]
    perm = [3, 0, 4, 1, 2]
    if "+resclip" in tiny.name:
        # ResCLIP's feedback labels depend on the order as published: low-confidence
        # patches take query 0 and ties the smallest id. Without SFR it is equivariant.
        monkeypatch.setattr(tiny.model, "use_sfr", False)
    a = tiny(_image(), names, return_scores=True)
    b = tiny(_image(), [names[i] for i in perm], return_scores=True)
    assert torch.allclose(b.scores, a.scores[perm], atol=1e-5)


def test_a_class_repeated_under_a_synonym_changes_nothing(tiny):
    """A second synonym with the same embedding as the first must not change any score
    (classes take the max over synonyms before any normalisation)."""
    from vocabseg.engine import inference
    from vocabseg.vocab import Vocabulary
    one = Vocabulary.parse("sky; tree; road")
    two = Vocabulary.parse("sky; tree, tree again; road")
    tiny.set_image(_image())
    text = tiny.text(one)
    text2 = torch.cat([text[:2], text[1:2], text[2:]])
    a = inference.scores(tiny.model, tiny._features, text, one)
    b = inference.scores(tiny.model, tiny._features, text2, two)
    assert torch.equal(a.argmax(0), b.argmax(0))
    if not getattr(tiny.model, "synonym_softmax", False):   # training-free family: softmax over synonyms, as published
        assert torch.allclose(a, b, atol=1e-6)


def test_new_vocabulary_on_the_same_image_reuses_the_features(tiny, monkeypatch):
    tiny.set_image(_image(seed=3))
    calls = []
    orig = tiny.model.encode_image
    monkeypatch.setattr(tiny.model, "encode_image", lambda x: calls.append(1) or orig(x))
    r1 = tiny.predict("sky; road", return_scores=True)
    r2 = tiny(_image(seed=3), "sky; road", return_scores=True)    # same pixels: still cached
    assert calls == [] and torch.equal(r1.scores, r2.scores)
    fresh = Segmenter(tiny.model)(_image(seed=3), "sky; road", return_scores=True)
    assert torch.allclose(fresh.scores, r1.scores, atol=1e-6) and calls


def test_errors_are_user_errors(tiny):
    with pytest.raises(UserError, match="set_image"):
        Segmenter(tiny.model).predict("a; b")
    if "panoptic" not in tiny.tasks:
        with pytest.raises(UserError, match="does not do panoptic"):
            tiny(_image(), "a; b", task="panoptic")
    with pytest.raises(UserError, match="unknown template set"):
        tiny(_image(), "a; b", templates="fancy")


def test_unknown_model_names_the_zoo():
    with pytest.raises(UnknownModel, match="unknown model 'nope'.*san-vit-b16"):
        load_model("nope")


def test_offline_published_model_says_how_to_supply_the_file():
    with pytest.raises(WeightsNotFound) as e:
        load_model("san-vit-b16")
    msg = str(e.value)
    assert "san-vit-b16" in msg and "san_vit_b_16.pth" in msg and "--weights PATH" in msg
    assert "huggingface.co/Mendel192/san" in msg


def test_checkpoint_round_trip(tmp_path):
    model = load_model(TINY[0])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = save_checkpoint(model, tmp_path / "ck")
    back = load_checkpoint(folder)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r1 = Segmenter(model)(_image(), "sky; road", return_scores=True)
    r2 = vocabseg.load(str(folder))(_image(), "sky; road", return_scores=True)
    assert torch.allclose(r1.scores, r2.scores, atol=1e-6)
    r3 = Segmenter(load_model(TINY[0], weights=str(folder / "model.safetensors")))(_image(), "sky; road",
                                                                                   return_scores=True)
    assert torch.allclose(r1.scores, r3.scores, atol=1e-6)


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    folder = save_checkpoint(load_model(TINY[0]), tmp_path / "ck")
    (folder / "config.json").write_text((folder / "config.json").read_text().replace(TINY[0], TINY[-1]))
    assert TINY[0] != TINY[-1]
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(folder)


def test_a_path_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    f = tmp_path / "weights.pth"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="--model NAME --weights"):
        load_model(str(f))


def test_fp16_is_a_gpu_option(tiny, capsys):     # bf16 on CPU: tests/test_precision.py
    from vocabseg.cli import main
    for bad, msg in (("fp16", "CUDA devices only"), ("fp8", "unknown precision 'fp8'")):
        with pytest.raises(UserError, match=msg):
            Segmenter(tiny.model, precision=bad)
    assert main(["segment", "x.png", "--labels", "a; b", "--precision", "fp16"]) == 2
    assert "precision fp16 is for CUDA devices only" in capsys.readouterr().err
    seg = Segmenter(tiny.model, precision="fp32")
    with seg.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_tta_with_one_size_and_no_flip_is_plain_inference_at_that_size(tiny, monkeypatch):
    from vocabseg.engine.inference import tta
    monkeypatch.setattr(tta, "DEFAULT_SIZES", (tiny.model.protocol.short_side,))
    orig = tta.tta_map
    monkeypatch.setattr(tta, "tta_map", lambda m, i, t, v: orig(m, i, t, v, sizes=(m.protocol.short_side,),
                                                                  flip=False, max_side=m.protocol.max_side))
    plain = tiny(_image(), "sky; road", return_scores=True)
    aug = tiny(_image(), "sky; road", return_scores=True, tta=True)
    assert torch.allclose(plain.scores, aug.scores, atol=1e-5)
    with pytest.raises(UserError, match="semantic segmentation only"):
        tiny(_image(), "sky; road", tta=True, task="panoptic")


def test_tta_encodes_only_its_own_passes_and_keeps_the_cache_usable(tiny, monkeypatch):
    from vocabseg.engine.inference import tta
    orig = tta.tta_map
    monkeypatch.setattr(tta, "tta_map", lambda m, i, t, v: orig(m, i, t, v, sizes=(m.protocol.short_side,),
                                                                  flip=True, max_side=m.protocol.max_side))
    seg = Segmenter(tiny.model)
    calls = []
    real = tiny.model.encode_image
    monkeypatch.setattr(tiny.model, "encode_image", lambda x: calls.append(x.shape[0]) or real(x))
    seg(_image(seed=5), "sky; road", tta=True)
    windows = len(calls)                          # one size and its flip: the augmented passes only
    assert windows >= 2 and seg._features is None
    plain = seg.predict("sky; road", return_scores=True)             # same image, features computed now
    assert len(calls) > windows
    assert torch.allclose(plain.scores, Segmenter(tiny.model)(_image(seed=5), "sky; road", return_scores=True).scores,
                          atol=1e-6)
