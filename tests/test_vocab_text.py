import pytest
import torch
import torch.nn.functional as F

from vocabseg.vocab import Vocabulary, VocabularyError, reduce_synonyms
from vocabseg.text import TextEncoder, encode_text_tokens, templates
from vocabseg.backbones.clip import create_clip


def test_parse_synonyms():
    v = Vocabulary.parse("road; car, truck ;  person  ")
    assert v.names == ["road", "car", "person"]
    assert v.prompts == ["road", "car", "truck", "person"]
    assert v.synonym_index.tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("text,msg", [("", "no class names"), (" ; ;", "no class names"),
                                      ("car; car", "appears in classes"),
                                      ("x" * 201, "characters long")])
def test_parse_errors(text, msg):
    with pytest.raises(VocabularyError, match=msg):
        Vocabulary.parse(text)


def test_reduce_synonyms_is_max():
    logits = torch.randn(2, 4, 3, 3)
    idx = torch.tensor([0, 1, 1, 2])
    out = reduce_synonyms(logits, idx, 3)
    assert torch.equal(out[:, 1], logits[:, 1:3].max(1).values)
    assert torch.equal(out[:, 2], logits[:, 3])


def test_truncated_text_encoding_equals_full():
    clip, tok, _ = create_clip("tiny-vit")
    tokens = tok(["a photo of a cat.", "there is a very large red double-decker bus in the scene."])
    full = clip.encode_text(tokens)
    assert torch.allclose(encode_text_tokens(clip, tokens), full, atol=1e-5)


def test_template_average_matches_independent(tmp_path):
    clip, tok, ident = create_clip("tiny-vit")
    enc = TextEncoder(clip, tok, ident, "vild")
    names = ["cat", "potted plant"]
    got = enc.encode_names(names)
    ref = []
    for n in names:
        f = F.normalize(clip.encode_text(tok([t.format(n) for t in templates("vild")])), dim=-1)
        ref.append(F.normalize(f.mean(0), dim=-1))
    assert torch.allclose(got, torch.stack(ref), atol=1e-5)
    assert enc.cache_path(names).is_file()
