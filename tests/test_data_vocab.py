from importlib import resources

import pytest

from vocabseg.vocab import Vocabulary

COUNTS = {"voc20": 20, "voc21": 21, "pc59": 59, "pc60": 60, "pc459": 459, "ade150": 150, "ade847": 847,
          "coco-stuff": 171, "coco-object": 81, "cityscapes": 19, "coco-panoptic": 133, "ade-panoptic": 150}
CONVENTIONS = {
    "fcclip": ["voc20", "voc21", "pc59", "pc459", "ade150", "ade847", "coco-stuff", "coco-panoptic",
               "ade-panoptic", "cityscapes"],
    "san": ["voc20", "pc59", "pc459", "ade150", "ade847", "coco-stuff"],
    "tf": ["voc20", "voc21", "pc59", "pc60", "coco-object", "coco-stuff", "cityscapes", "ade150"],
    "clearclip": ["voc20", "voc21", "pc59", "pc60", "coco-object", "coco-stuff", "cityscapes", "ade150"],
}
BACKGROUND = {"voc21", "pc60", "coco-object"}


def _files():
    return sorted(f.name for f in (resources.files("vocabseg") / "data" / "vocab").iterdir()
                  if f.name.endswith(".txt"))


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_default_vocabulary_counts_and_background(name):
    v = Vocabulary.from_dataset(name)
    assert len(v) == COUNTS[name]
    assert v.background == (0 if name in BACKGROUND else None)


@pytest.mark.parametrize("conv,name", [(c, n) for c, ns in CONVENTIONS.items() for n in ns])
def test_convention_counts(conv, name):
    v = Vocabulary.from_dataset(f"{name}:{conv}")
    assert len(v) == COUNTS[name]
    assert v.background == (0 if name in BACKGROUND else None)


def test_every_file_names_its_source_and_is_known():
    files = _files()
    expected = {f"{n}.txt" for n in COUNTS} | {f"{n}.{c}.txt" for c, ns in CONVENTIONS.items() for n in ns
                                               if c != "clearclip"}   # ClearCLIP's other lists are the tf files
    expected |= {f"{n}.clearclip.txt" for n in ("voc20", "voc21", "coco-object")}
    assert expected <= set(files)
    for f in files:
        lines = (resources.files("vocabseg") / "data" / "vocab" / f).read_text().splitlines()
        assert any(line.startswith("# source: ") for line in lines[:3]), f


def test_published_details_survive_conversion():
    # FC-CLIP synonyms; voc21 background line starts with "background"
    ade = Vocabulary.from_dataset("ade150", "fcclip")
    assert ade.classes[0][:2] == ("wall", "walls")
    assert Vocabulary.from_dataset("voc21:fcclip").classes[0][0] == "background"
    # SAN: whole WordNet strings are one prompt each
    san847 = Vocabulary.from_dataset("ade847", "san")
    assert san847.classes[1] == ("building, edifice",)
    assert "person, individual, someone, somebody, mortal, soul" in san847.prompts
    assert Vocabulary.from_dataset("ade150:san").classes[6] == ("road, route",)
    # training-free: background words on line 0, synonyms split on ", "
    tf = Vocabulary.from_dataset("voc21:tf")
    assert tf.classes[0][:3] == ("sky", "wall", "tree") and tf.classes[1] == ("aeroplane",)
    assert Vocabulary.from_dataset("coco-object:tf").classes[1][0] == "person"
    # COCO-Object (tf): "bed" is on the background line and is the only name of class bed
    obj = Vocabulary.from_dataset("coco-object:tf")
    assert "bed" not in obj.classes[0] and ("bed",) in obj.classes


def test_escaped_comma_round_trip():
    v = Vocabulary.parse(r"road\, route, street; car")
    assert v.classes == (("road, route", "street"), ("car",))
    assert Vocabulary.parse(v.to_string()) == v
    assert Vocabulary.parse("a, b; c").classes == (("a", "b"), ("c",))
