"""The web demo: its callbacks without a browser, then the page in headless Chromium."""
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vocabseg
from vocabseg.api import Segmenter, load_model
from vocabseg.checkpoint import save_checkpoint
from vocabseg.cli import main
from vocabseg.commands.demo import model_list
from vocabseg.demo import callbacks as cb
from vocabseg.errors import ImageError
from vocabseg.render import palette
from vocabseg.results import PanopticResult
from vocabseg.vocab import Vocabulary, VocabularyError

from toy import PointwiseModel, fake_text

REPO = Path(__file__).resolve().parents[1]


class _ToyText:
    """Stands in for a TextEncoder: fixed embeddings per name, the same attributes."""
    def __init__(self):
        self.cache, self._memory = True, {}

    def __call__(self, vocab):
        return fake_text(vocab)


class ToyModel(PointwiseModel):
    def __init__(self):
        super().__init__()
        self.texts = {}

    def text_encoder(self, template_set=None):
        return self.texts.setdefault(template_set, _ToyText())


class PanopticToy(Segmenter):
    """A Segmenter that also answers task="panoptic" (one stuff segment per class present)."""
    tasks = ("semantic", "panoptic")

    def predict(self, vocabulary, templates=None, return_scores=False, task="semantic"):
        sem = super().predict(vocabulary, templates=templates)
        if task != "panoptic":
            return sem
        segs = [{"id": c + 1, "category_id": c, "isthing": False, "score": 1.0} for c in sem.labels.unique().tolist()]
        return PanopticResult((sem.labels + 1).int(), segs, sem.vocabulary, sem.image, self.name)


def _stripes(path, w=120, h=80):
    """Left half dark blue, right half bright yellow: the toy model tells them apart."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (10, 20, 200)
    a[:, w // 2:] = (250, 240, 10)
    Image.fromarray(a).save(path)
    return str(path)


# --- images within the limits -------------------------------------------------
@pytest.mark.parametrize("size,cap", [((4000, 3000), 1_000_000), ((10_000, 10), 4096), ((7, 5000), 1000),
                                      ((640, 480), 640 * 480), ((33, 17), 10_000)])
def test_fit_pixels_keeps_aspect_under_the_cap(size, cap):
    w, h = size
    w2, h2 = cb.fit_pixels(w, h, cap)
    assert w2 * h2 <= cap
    if w * h <= cap:
        assert (w2, h2) == (w, h)
    else:   # as large as the cap allows: one more pixel on either side would not fit the ratio's floor
        s = math.sqrt(cap / (w * h))
        assert abs(w2 - w * s) <= 1 + 1e-9 and (abs(h2 - h * s) <= 1 + 1e-9 or h2 == 1)


def test_read_upload_downscales_large_images_and_reads_gradio_payloads(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1600, 3), dtype=np.uint8)).save(big)
    limits = cb.Limits(max_pixels=100_000)
    im, original, name = cb.read_upload({"path": str(big), "orig_name": "holiday photo.png"}, limits)
    assert original == (1600, 900) and name == "holiday photo.png"
    assert im.width * im.height <= 100_000 and im.width * im.height > 0.98 * 100_000
    assert abs(im.width / im.height - 16 / 9) < 0.01
    small, original, _ = cb.read_upload(_stripes(tmp_path / "s.png"), limits)
    assert small.size == original == (120, 80)


def test_read_upload_applies_exif_orientation(tmp_path):
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, :50] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif)
    im, original, _ = cb.read_upload(str(tmp_path / "r.jpg"), cb.Limits(max_pixels=1000))
    assert original == (40, 100) and im.height > im.width


def test_read_upload_errors_say_what_is_wrong(tmp_path):
    bad = tmp_path / "cat.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg" * 10)
    with pytest.raises(ImageError, match="cannot read cat.jpg"):
        cb.read_upload(str(bad), cb.Limits())
    Image.new("RGB", (800, 800)).save(tmp_path / "truncated.png")
    data = (tmp_path / "truncated.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot read truncated.png"):
        cb.read_upload(str(tmp_path / "truncated.png"), cb.Limits())
    (tmp_path / "huge.bin").write_bytes(b"0" * 3_000_000)
    with pytest.raises(ImageError, match="huge.bin is 3.0 MB; this demo accepts files up to 2 MB"):
        cb.read_upload({"path": str(tmp_path / "huge.bin"), "orig_name": "huge.bin"}, cb.Limits(max_upload_mb=2))
    with pytest.raises(ImageError, match="no image"):
        cb.read_upload(None, cb.Limits())


def test_vocabulary_is_only_typed_text(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    assert cb.parse_vocabulary(str(secret), 10).names == [str(secret)]      # a name, never a file read
    assert cb.parse_vocabulary("voc20", 10).names == ["voc20"]
    with pytest.raises(VocabularyError, match="the vocabulary is empty"):
        cb.parse_vocabulary(" ; , ", 10)
    with pytest.raises(VocabularyError, match="3 classes; this demo accepts at most 2"):
        cb.parse_vocabulary("a; b; c", 2)
    assert "ade150:fcclip" in cb.benchmark_vocabularies() and "voc20" in cb.benchmark_vocabularies()
    assert Vocabulary.parse(cb.benchmark_text("voc20")) == Vocabulary.from_dataset("voc20")


# --- one request ----------------------------------------------------------------
def _cache(seg_cls=Segmenter, offered=("toy", "pan", "a", "b")):
    made = []

    def factory(name):
        made.append(name)
        return seg_cls(ToyModel(), name=name)
    return cb.ModelCache(factory, offered), made


def test_segment_renders_legend_files_and_highlight_under_the_temp_dir(tmp_path):
    cache, made = _cache()
    out_root = tmp_path / "app-temp" / "results"
    image = _stripes(tmp_path / "two halves.png")
    res = cb.segment(cache, "toy", image, "water, sea; sun, lemon", "single", cb.Limits(), out_root)
    assert not res.error, res.message
    sem = res.view.semantic
    assert sem.labels.shape == (80, 120) and res.overlay.size[1] >= 80
    assert res.message.startswith("toy: 2 classes on 120×80 in ")
    shares = {c["name"]: c["share"] for c in sem.summary()["classes"]}
    assert [t for t, _ in res.legend] == [f"{n} {100 * s:.1f}%" for n, s in sorted(shares.items(), key=lambda kv: -kv[1])] \
        + [f"{n} 0%" for n in ["water", "sun"] if n not in shares]
    assert res.colors == {"water": "#%02x%02x%02x" % tuple(palette(2)[0]), "sun": "#%02x%02x%02x" % tuple(palette(2)[1])}
    assert np.array_equal(np.array(res.labels), sem.labels.numpy())
    # downloads: labels PNG, overlay PNG, JSON, all inside the app's temporary folder
    names = sorted(Path(f).name for f in res.files)
    assert names == ["two_halves.json", "two_halves_labels.png", "two_halves_overlay.png"]
    for f in res.files:
        assert Path(f).resolve().is_relative_to(out_root.resolve())
    assert json.loads(Path(next(f for f in res.files if f.endswith(".json"))).read_text())["vocabulary"] == \
        "water, sea; sun, lemon"
    # the legend's highlight equals the result's own highlight rendering
    name = res.legend[0][1]
    over, pan = cb.highlight(res.view, name)
    assert pan is None
    assert np.array_equal(np.array(over), np.array(sem.overlay(legend=False, highlight=sem.vocabulary.names.index(name))))
    assert np.array_equal(np.array(cb.highlight(res.view, None)[0]), np.array(res.overlay))
    # text embeddings stay in memory (nothing in VOCABSEG_HOME), the model is loaded once
    assert cache.segmenter.model.texts["single"].cache is False
    cb.segment(cache, "toy", image, "sky; ground", None, cb.Limits(), out_root)
    assert made == ["toy"]
    assert not (Path(os.environ["VOCABSEG_HOME"]) / "text").exists()


def test_segment_errors_come_back_as_messages_and_the_next_request_works(tmp_path):
    cache, made = _cache()
    bad = tmp_path / "bad.png"
    bad.write_bytes(os.urandom(500))
    good = _stripes(tmp_path / "good.png")
    limits = cb.Limits()
    for image, vocab, expected in [(str(bad), "cat", "cannot read bad.png: not an image file"),
                                   (good, "", "the vocabulary is empty"),
                                   (good, "cat; Cat", "name 'Cat' appears in classes 0 and 1"),
                                   (None, "cat", "no image")]:
        res = cb.segment(cache, "toy", image, vocab, None, limits, tmp_path / "out")
        assert res.error and expected in res.message and res.overlay is None
    res = cb.segment(cache, "toy", good, "cat", "nonsense", limits, tmp_path / "out")
    assert res.error and "unknown template set 'nonsense'" in res.message
    res = cb.segment(cache, "toy", good, "cat; dog", None, limits, tmp_path / "out")
    assert not res.error and res.view.semantic.labels.shape == (80, 120)

    def broken(name):
        raise RuntimeError("boom")
    res = cb.segment(cb.ModelCache(broken, ["x"]), "x", good, "cat", None, limits, tmp_path / "out")
    assert res.error and res.message == "internal error (RuntimeError); the server log has the details"


def test_segment_downscales_and_shows_the_panoptic_view(tmp_path):
    cache, _ = _cache(PanopticToy)
    big = tmp_path / "big.png"
    Image.open(_stripes(tmp_path / "s.png")).resize((600, 400), Image.NEAREST).save(big)
    res = cb.segment(cache, "pan", str(big), "blue; yellow", None, cb.Limits(max_pixels=6000), tmp_path / "out")
    assert not res.error, res.message
    assert res.view.semantic.labels.shape == (63, 94)     # floor(600 s), floor(400 s) with s = sqrt(6000 / 240000)
    assert "on 94×63 (downscaled from 600×400)" in res.message
    assert res.panoptic is not None and res.view.panoptic is not None
    assert sorted(Path(f).name for f in res.files) == ["big.json", "big_labels.png", "big_overlay.png",
                                                        "big_panoptic_overlay.png", "big_panoptic_panoptic.json",
                                                        "big_panoptic_panoptic.png"]
    over, pan = cb.highlight(res.view, "blue")
    assert np.array_equal(np.array(pan), np.array(res.view.panoptic.overlay(legend=False, highlight=0)))


def test_model_cache_holds_one_model(tmp_path):
    cache, made = _cache()
    a = cache.get("a")
    assert cache.get("a") is a and made == ["a"]
    b = cache.get("b")
    assert b is not a and cache.name == "b" and made == ["a", "b"]


def test_result_folders_are_pruned(tmp_path):
    dirs = [cb.new_result_dir(tmp_path, keep=3) for _ in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(d.name for d in dirs[-3:])


def test_cli_model_list_and_errors(tmp_path, capsys):
    ck = save_checkpoint(load_model("segclip-tiny"), tmp_path / "mine")
    models = model_list([str(ck), "san-tiny"])
    assert list(models.items())[:2] == [("mine", str(Path(ck).resolve())), ("san-tiny", "san-tiny")]
    assert main(["demo", "--model", "no-such-model"]) == 2
    assert "--model no-such-model: unknown model" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path)]) == 2
    assert "not a vocabseg checkpoint folder" in capsys.readouterr().err


# --- the page in a browser ------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vocabseg demo` in a subprocess with a tiny checkpoint; its HOME, working
    folder and TMPDIR are empty folders, checked after it stops."""
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    ck = save_checkpoint(load_model("san-tiny"), root / "san-tiny")
    dirs = {k: root / k for k in ("home", "cwd", "tmp")}
    for d in dirs.values():
        d.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOCABSEG_", "GRADIO_"))}
    env.update(HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(Path(vocabseg.__file__).parents[1]), env.get("PYTHONPATH", "")]))
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vocabseg.cli", "demo", "--model", str(ck), "--port", str(port),
                             "--max-pixels", "40000", "--max-upload-mb", "2"],
                            cwd=dirs["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the demo did not start:\n" + (root / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    info = {"url": url, "root": root, "proc": proc, "dirs": dirs}
    yield info
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)
    log.close()


@pytest.mark.browser
def test_page_segments_highlights_and_survives_bad_requests(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    bad = tmp_path / "broken.png"
    bad.write_bytes(os.urandom(3000))
    outside = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)      # the first request loads the model: slow on a busy machine
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
            (server["url"], "data:", "blob:")) else None)
        page.goto(server["url"])
        status = page.locator("#status")

        def submit(image, vocabulary):
            page.locator("#image-in input[type=file]").set_input_files(str(image))
            expect(page.locator("#image-in img")).to_have_attribute("src", re.compile(
                Path(image).name.replace(".", r"\.") + "$"))
            page.locator("#vocab textarea").fill(vocabulary)
            page.locator("#segment").click()

        # a good request: overlay, legend with every typed class, downloads
        submit(REPO / "examples" / "chelsea.jpg", "cat; wall; floor, carpet")
        expect(status).to_contain_text("3 classes on 245×163 (downscaled from 451×300)")
        expect(page.locator("#overlay img")).to_be_visible()
        tokens = page.locator("#legend .token")
        expect(tokens).to_have_count(3)
        assert sorted(t.split()[0] for t in tokens.all_inner_texts()) == ["cat", "floor", "wall"]
        links = page.locator("#files a")
        expect(links).to_have_count(3)
        hrefs = {a.get_attribute("href").rsplit("/", 1)[1]: a.get_attribute("href") for a in links.all()}
        assert sorted(hrefs) == ["chelsea.json", "chelsea_labels.png", "chelsea_overlay.png"]
        summary = json.loads(urllib.request.urlopen(hrefs["chelsea.json"], timeout=10).read())
        assert summary["vocabulary"] == "cat; wall; floor, carpet" and (summary["height"], summary["width"]) == (163, 245)
        # a legend click re-renders the overlay with that class highlighted
        before = page.locator("#overlay img").get_attribute("src")
        tokens.first.click()
        expect(page.locator("#overlay img")).not_to_have_attribute("src", before)
        # the README's screenshot: written to docs/ when VOCABSEG_SCREENSHOT=1, else beside the test's files
        shot = REPO / "docs" / "demo.png" if os.environ.get("VOCABSEG_SCREENSHOT") == "1" else tmp_path / "demo.png"
        shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # a corrupt file and an empty vocabulary: a message in the page
        submit(bad, "cat; dog")
        expect(status).to_contain_text("cannot read broken.png: not an image file")
        expect(page.locator("#overlay img")).to_have_count(0)        # the previous result is cleared
        expect(page.locator("#legend .token")).to_have_count(0)
        submit(REPO / "examples" / "coffee.jpg", " ; ")
        expect(status).to_contain_text("the vocabulary is empty")
        # ... and the next request is served (Enter submits too)
        page.locator("#vocab textarea").fill("cup; table")
        page.locator("#vocab textarea").press("Enter")
        expect(status).to_contain_text("2 classes on")
        expect(page.locator("#legend .token")).to_have_count(2)
        expect(page.locator("#files a").first).to_have_attribute("href", re.compile(r"/coffee[_.]"))
        # picking a benchmark vocabulary fills the text box
        page.locator("#benchmark input").click()
        page.locator("#benchmark input").fill("voc20")
        page.locator("#benchmark input").press("Enter")
        expect(page.locator("#vocab textarea")).to_have_value(Vocabulary.from_dataset("voc20").to_string())
        ctx.close()
    assert outside == [], f"the page fetched from outside the server: {outside[:5]}"

    # stopping the server removes its temporary folder; nothing was written elsewhere
    server["proc"].terminate()
    assert server["proc"].wait(timeout=30) == 0
    for name, d in server["dirs"].items():
        left = [str(p.relative_to(d)) for p in d.rglob("*")]
        assert left == [], f"the demo left files in its {name} folder: {left[:10]}"
