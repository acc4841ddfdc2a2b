import warnings

import pytest
import torch

from vocabseg.backbones.clip import WeightsNotFound, create_clip
from vocabseg.text import TextEncoder, vocabseg_home
from vocabseg.vocab import Vocabulary


@pytest.fixture
def clip():
    torch.manual_seed(0)
    return create_clip("tiny-vit")


def _counting(enc, calls):
    orig = enc._encode
    enc._encode = lambda names, p="fp32": calls.append(list(names)) or orig(names, p)
    return enc


def test_cache_hit_miss_and_disk_reuse(clip):
    model, tok, ident = clip
    calls = []
    vocab = Vocabulary.parse("cat; dog, puppy")
    enc = _counting(TextEncoder(model, tok, ident, "vild"), calls)
    a = enc(vocab)
    assert a.shape == (3, 32) and torch.allclose(a.norm(dim=-1), torch.ones(3))
    assert enc(vocab) is a and len(calls) == 1                     # memory hit
    assert enc.cache_path(vocab.prompts).is_relative_to(vocabseg_home())
    again = _counting(TextEncoder(model, tok, ident, "vild"), calls)
    assert torch.equal(again(vocab), a) and len(calls) == 1         # disk hit in a new encoder
    again(Vocabulary.parse("cat; bird"))
    assert len(calls) == 2                                          # new names: a miss


def test_templates_and_weights_change_the_key(clip):
    model, tok, ident = clip
    names = ["cat", "dog"]
    vild = TextEncoder(model, tok, ident, "vild")
    single = TextEncoder(model, tok, ident, "single")
    assert vild.cache_path(names) != single.cache_path(names)
    assert not torch.allclose(vild.encode_names(names), single.encode_names(names))
    model2, _, ident2 = create_clip("tiny-vit")     # other (random) weights: another identity
    assert ident2 != ident
    other = TextEncoder(model2, tok, ident2, "vild")
    assert other.cache_path(names) != vild.cache_path(names)
    assert not torch.allclose(other.encode_names(names), vild.encode_names(names))


def test_weights_file_identity_follows_its_content(tmp_path):
    model, _, _ = create_clip("tiny-vit")
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    _, _, id1 = create_clip("tiny-vit", str(path))
    sd = model.state_dict()
    sd["text_projection"] = sd["text_projection"] + 1
    torch.save(sd, path)
    _, _, id2 = create_clip("tiny-vit", str(path))
    assert id1 != id2


def test_a_torn_cache_file_is_encoded_again(clip):
    model, tok, ident = clip
    enc = TextEncoder(model, tok, ident, "single")
    good = enc.encode_names(["cat"])
    enc.cache_path(["cat"]).write_bytes(b"garbage")
    fresh = TextEncoder(model, tok, ident, "single")
    assert torch.allclose(fresh.encode_names(["cat"]), good)


def test_offline_clip_weights_error_says_how_to_supply_them():
    with pytest.raises(WeightsNotFound) as e:
        create_clip("ViT-B-16", "openai")
    msg = str(e.value)
    assert "ViT-B-16/openai" in msg and "--clip-weights PATH" in msg and "\n" not in msg


def test_unknown_clip_tag_lists_known_ones():
    with pytest.raises(ValueError, match="open_clip knows: .*openai"):
        create_clip("ViT-B-16", "nonsense")


@pytest.mark.parametrize("bad, reason", [
    (lambda good: torch.full_like(good, float("nan")), "not finite"),
    (lambda good: good[:, :-1].clone(), "of shape"),
    (lambda good: 3 * good, "not unit-norm"),
    (lambda good: good.to(torch.int64), "not a float tensor"),
    (lambda good: {"not": "a tensor"}, "not a float tensor"),
])
def test_bad_cache_entries_are_re_encoded_and_rewritten(clip, bad, reason):
    model, tok, ident = clip
    names = ["cat", "dog", "puppy"]
    good = TextEncoder(model, tok, ident, "vild").encode_names(names)
    path = TextEncoder(model, tok, ident, "vild").cache_path(names)
    torch.save(bad(good), path)
    with pytest.warns(UserWarning, match=reason):
        again = TextEncoder(model, tok, ident, "vild").encode_names(names)
    assert torch.equal(again, good)
    assert torch.equal(torch.load(path, weights_only=True), good)   # the entry was rewritten
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # now a clean hit: no warning
        assert torch.equal(TextEncoder(model, tok, ident, "vild").encode_names(names), good)


def test_torn_cache_file_is_re_encoded(clip):
    model, tok, ident = clip
    enc = TextEncoder(model, tok, ident, "vild")
    good = enc.encode_names(["cat"])
    enc.cache_path(["cat"]).write_bytes(b"\x80torn")
    with pytest.warns(UserWarning, match="unreadable"):
        assert torch.equal(TextEncoder(model, tok, ident, "vild").encode_names(["cat"]), good)
