"""Hostile and careless requests to the web demo: the server is started in the
test (in this process, on a free port) and driven over plain HTTP exactly as a
script would, without the page; plus the `vocabseg demo` arguments and the legend."""
import html
import json
import os
import socket
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg import render
from vocabseg.api import Segmenter, load, load_model
from vocabseg.checkpoint import save_checkpoint
from vocabseg.cli import main
from vocabseg.demo import callbacks as cb
from vocabseg.results import SemanticResult
from vocabseg.vocab import Vocabulary

from test_demo import PanopticToy, ToyModel, _free_port, _stripes

REFUSED = cb.MODEL_REFUSED
LIMITS = cb.Limits(max_pixels=40_000, max_upload_mb=2, max_decode_pixels=1_000_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo offering a fast toy model, `san-tiny`, a checkpoint folder `mine` and a panoptic toy;
    ``loaded`` records every target the model loader was asked for."""
    root = tmp_path_factory.mktemp("demo-http")
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
    mp.setenv("VOCABSEG_HOME", str(root / "home"))
    from vocabseg.demo import app
    torch.manual_seed(0)
    ckpt = str(save_checkpoint(load_model("segclip-tiny"), root / "ckpts" / "mine"))
    loaded = []

    def factory(target):
        loaded.append(target)
        if target == "toy-panoptic":
            return PanopticToy(ToyModel(), name="toy-panoptic")
        if target == "toy":
            return Segmenter(ToyModel(), name="toy")
        return load(target)

    offered = {"toy": "toy", "san-tiny": "san-tiny", "mine": ckpt, "pan": "toy-panoptic"}
    demo = app.build_app(factory, offered, limits=LIMITS, temp_dir=root, preload=True)
    port = _free_port()
    app.launch(demo, port=port, limits=LIMITS, block=False, quiet=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    config = client.get("/config").json()
    info = {"client": client, "config": config, "loaded": loaded, "root": root, "ckpt": ckpt,
            "deps": _dependencies(config)}
    yield info
    client.close()
    demo.close()
    mp.undo()


def _dependencies(config) -> dict:
    """(elem_id, event) -> fn_index of the page's events."""
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    out = {}
    for i, d in enumerate(config["dependencies"]):
        for target, event in d["targets"]:
            out.setdefault((ids.get(target), event), i)
    return out


def _upload(server, path) -> dict:
    with open(path, "rb") as f:
        r = server["client"].post("/gradio_api/upload", files={"files": (Path(path).name, f)})
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def _call(server, data, event=("segment", "click"), session=None, event_data=None) -> dict:
    """Joins the queue as the page does and returns the completed message."""
    session = session or uuid.uuid4().hex[:12]
    c = server["client"]
    r = c.post("/gradio_api/queue/join", json={"data": data, "fn_index": server["deps"][event], "trigger_id": None,
                                                "session_hash": session, "event_data": event_data})
    r.raise_for_status()
    with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("the server closed the stream without an answer")


def _status(msg) -> str:
    """The status line's text (the first output), or Gradio's own error."""
    if not msg.get("success"):
        return f"gradio error: {msg.get('output', {}).get('error')}"
    text = msg["output"]["data"][0]
    return html.unescape(text.split("</div>")[0].split(">", 1)[1]).removeprefix("⚠ ")


@pytest.fixture(scope="module")
def chelsea(server):
    return _upload(server, Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg")


def _segment(server, image, model="toy", vocabulary="cat; grass", templates="model default"):
    return _call(server, [image, model, vocabulary, templates])


def _refused(server, chelsea, model):
    before = list(server["loaded"])
    msg = _segment(server, chelsea, model=model)
    assert _status(msg) == REFUSED
    assert msg["output"]["data"][1] is None            # no overlay
    assert server["loaded"] == before                  # the loader was not called: nothing loaded or downloaded


# --- item 1: only the offered models, by name -------------------------------------------
def test_offered_model_segments_over_http(server, chelsea):
    msg = _segment(server, chelsea, model="mine")
    assert _status(msg).startswith("mine: 2 classes on 245×163 (downscaled from 451×300) in ")
    assert server["loaded"][-1] == server["ckpt"]


def test_model_as_absolute_path_is_refused(server, chelsea):
    _refused(server, chelsea, "/etc")


def test_offered_checkpoint_by_its_path_is_refused(server, chelsea):
    _refused(server, chelsea, server["ckpt"])


def test_model_as_dotdot_path_is_refused(server, chelsea):
    _refused(server, chelsea, "../../../../etc")


def test_test_preset_not_offered_is_refused(server, chelsea):
    _refused(server, chelsea, "segclip-tiny")


def test_zoo_model_not_offered_is_refused_without_download(server, chelsea):
    _refused(server, chelsea, "san-vit-l14")


def test_model_field_null_is_refused(server, chelsea):
    _refused(server, chelsea, None)      # was: the default model, downloaded


def test_model_field_not_text_is_refused(server, chelsea):
    _refused(server, chelsea, ["san-tiny"])


def test_offered_model_that_fails_to_load_names_no_server_path(tmp_path, capsys):
    from vocabseg.errors import WeightsNotFound

    def factory(target):
        raise WeightsNotFound(f"model big needs big.pth; place it at {tmp_path}/home/weights/big.pth")
    res = cb.segment(cb.ModelCache(factory, ["big"]), "big", _stripes(tmp_path / "s.png"), "cat", None,
                     cb.Limits(), tmp_path / "out")
    assert res.error and res.message == "model big could not be loaded; the server log says why"
    assert f"{tmp_path}/home/weights/big.pth" in capsys.readouterr().err


def test_page_names_no_server_path(server):
    text = json.dumps(server["config"])
    assert server["ckpt"] not in text and str(Path(server["ckpt"]).parent) not in text
    model = next(c for c in server["config"]["components"] if c.get("props", {}).get("elem_id") == "model")
    assert [c[1] for c in model["props"]["choices"]] == ["toy", "san-tiny", "mine", "pan"]


# --- the image field ------------------------------------------------------------------
def test_image_path_outside_the_upload_folder_is_not_read(server, tmp_path):
    secret = _stripes(tmp_path / "server_photo.png")      # a real image on the server, never uploaded
    msg = _segment(server, {"path": secret, "orig_name": "x.png"})
    assert _status(msg) == "no image: upload one or pick an example"
    assert msg["output"]["data"][1] is None


def test_image_path_escaping_the_upload_folder_is_not_read(server, chelsea, tmp_path):
    secret = _stripes(tmp_path / "server_photo.png")
    sneaky = os.path.join(os.path.dirname(chelsea["path"]), *[".."] * 12) + secret
    msg = _segment(server, {"path": sneaky, "orig_name": "x.png"})
    assert _status(msg) == "no image: upload one or pick an example"


def test_non_image_upload_is_a_message(server, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n" * 50)
    msg = _segment(server, _upload(server, notes))
    assert _status(msg) == "cannot read notes.png: not an image file or a format Pillow cannot read"


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_image_modes_segment(server, tmp_path, mode):
    im = Image.open(_stripes(tmp_path / "s.png"))
    im = im.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)
    im.save(tmp_path / "m.png")
    msg = _segment(server, _upload(server, tmp_path / "m.png"))
    assert _status(msg).startswith("toy: 2 classes on 120×80 in ")


def test_image_above_decode_limit_is_refused(server, tmp_path):
    Image.new("RGB", (1200, 1000)).save(tmp_path / "wide.png")      # 1.2 MP > the server's 1 MP
    msg = _segment(server, _upload(server, tmp_path / "wide.png"))
    assert _status(msg) == "wide.png is 1200×1000 pixels; this demo reads images of at most 1,000,000 pixels"


def test_large_jpeg_is_decoded_reduced_not_refused(server, tmp_path):
    Image.new("RGB", (1600, 1200), (90, 120, 30)).save(tmp_path / "big.jpg", quality=70)
    msg = _segment(server, _upload(server, tmp_path / "big.jpg"))
    assert _status(msg).startswith("toy: 2 classes on 230×173 (downscaled from 1600×1200) in ")


def test_upload_above_the_size_limit_is_refused_at_the_door(server, tmp_path):
    (tmp_path / "big.png").write_bytes(b"0" * 2_050_000)          # 2.05 MB: over 2 MB, under 2 MiB
    with open(tmp_path / "big.png", "rb") as f:
        r = server["client"].post("/gradio_api/upload", files={"files": ("big.png", f)})
    assert r.status_code == 413 and "2000000 bytes" in r.text


def test_upload_name_with_path_parts_stays_in_the_results_folder(server, chelsea):
    image = dict(chelsea, orig_name="../../../../../tmp/evil name.jpg")
    msg = _segment(server, image)
    assert _status(msg).startswith("toy: 2 classes")
    names = sorted(f["orig_name"] for f in msg["output"]["data"][5])
    assert names == ["evil_name.json", "evil_name_labels.png", "evil_name_overlay.png"]
    assert not list(Path("/tmp").glob("evil name*"))


# --- the vocabulary and template fields ----------------------------------------------------
def test_empty_vocabulary_is_a_message(server, chelsea):
    msg = _segment(server, chelsea, vocabulary="")
    assert _status(msg).startswith("the vocabulary is empty")


def test_vocabulary_of_separators_only_is_empty(server, chelsea):
    msg = _segment(server, chelsea, vocabulary=" ;;, ;\n,;")
    assert _status(msg).startswith("the vocabulary is empty")


def test_vocabulary_not_text_is_a_message(server, chelsea):
    msg = _segment(server, chelsea, vocabulary=12345)
    assert _status(msg) == "the vocabulary must be text: class names separated by ';'"


def test_huge_vocabulary_text_is_refused_before_parsing(server, chelsea):
    text = ";".join(f"class{i}" for i in range(1_000_000))        # 7.9 MB: parsing it took seconds
    msg = _segment(server, chelsea, vocabulary=text)
    assert _status(msg) == f"the vocabulary is {len(text)} characters long; this demo accepts at most 100000"


def test_too_many_classes_is_a_message(server, chelsea):
    msg = _segment(server, chelsea, vocabulary=";".join(f"c{i}" for i in range(5000)))
    assert _status(msg) == "the vocabulary has 5000 classes; this demo accepts at most 1000"


def test_template_field_not_text_is_a_message(server, chelsea):
    msg = _segment(server, chelsea, templates={"a": 1})
    assert _status(msg) == "unknown template set; use one of single, vild, imagenet"


# --- requests as a whole ------------------------------------------------------------------
def test_request_with_missing_fields_is_refused_and_the_server_keeps_serving(server, chelsea):
    msg = _call(server, [chelsea])
    assert msg.get("success") is False
    assert _status(_segment(server, chelsea)).startswith("toy: 2 classes")


def test_concurrent_requests_each_get_their_own_result(server, chelsea):
    vocabularies = ["cat; grass", "sky; road; tree", "dog", "a; b; c; d"]
    out = {}

    def ask(v):
        out[v] = _segment(server, chelsea, vocabulary=v)
    threads = [threading.Thread(target=ask, args=(v,)) for v in vocabularies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for v in vocabularies:
        n = len(Vocabulary.parse(v))
        assert _status(out[v]).startswith(f"toy: {n} classes on 245×163")
        legend = out[v]["output"]["data"][2]["value"]
        assert sorted(e["class_or_confidence"] for e in legend) == sorted(Vocabulary.parse(v).names)


def test_benchmark_name_not_offered_is_refused(server):
    msg = _call(server, ["../../../../../../etc/hostname"], event=("benchmark", "input"))
    assert msg["success"] is False
    assert "is not in the list of choices" in msg["output"]["error"]


def test_legend_click_with_garbage_event_data_still_answers(server, chelsea):
    session = uuid.uuid4().hex[:12]
    assert _status(_call(server, [chelsea, "toy", "cat; grass", "model default"], session=session)) \
        .startswith("toy: 2 classes")
    for garbage in ({"index": 0, "value": [None, {"a": 1}], "selected": True},
                    {"index": [1], "value": [1, ["cat"]], "selected": "yes"}):
        msg = _call(server, [None], event=("legend", "select"), session=session, event_data=garbage)
        assert msg["success"] is True and msg["output"]["data"][0]["path"].endswith(".png")


# --- the Panoptic tab ------------------------------------------------------------------------
def _tab_visible(update) -> bool:
    return update.get("visible", True)


def test_panoptic_tab_hidden_for_a_semantic_model(server, chelsea):
    tab = next(c for c in server["config"]["components"] if c.get("props", {}).get("elem_id") == "panoptic-tab")
    assert tab["props"]["visible"] is False                   # toy, the first model, is semantic only
    msg = _segment(server, chelsea, model="toy")
    assert not _tab_visible(msg["output"]["data"][7])


def test_panoptic_tab_shown_for_a_panoptic_model_and_hidden_again(server, chelsea):
    msg = _segment(server, chelsea, model="pan")
    assert _tab_visible(msg["output"]["data"][7]) and msg["output"]["data"][4]["visible"] is True
    change = _call(server, ["toy"], event=("model", "change"))
    assert not _tab_visible(change["output"]["data"][0])
    change = _call(server, ["pan"], event=("model", "change"))
    assert _tab_visible(change["output"]["data"][0])


# --- `vocabseg demo` arguments: one line, before any model loads ----------------------------
@pytest.fixture
def no_load(monkeypatch):
    """Fails the test if the demo command loads a model."""
    import vocabseg.api

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(vocabseg.api, "load", refuse)
    monkeypatch.setattr(vocabseg.api, "load_model", refuse)


def _demo_error(capsys, *args) -> str:
    assert main(["demo", "--model", "san-tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_port_out_of_range_is_one_line(no_load, capsys):
    assert _demo_error(capsys, "--port", "99999") == "vocabseg demo: error: --port 99999: use a port number from 1 to 65535"


def test_port_zero_is_one_line(no_load, capsys):
    assert _demo_error(capsys, "--port", "0") == "vocabseg demo: error: --port 0: use a port number from 1 to 65535"


def test_port_in_use_is_one_line(no_load, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert _demo_error(capsys, "--port", str(port)) == \
            f"vocabseg demo: error: --port {port}: already in use on 127.0.0.1; choose another port"


def test_unknown_host_is_one_line(no_load, capsys):
    assert _demo_error(capsys, "--host", "no-such-host.invalid") == \
        "vocabseg demo: error: --host no-such-host.invalid: not a host name or address this machine can resolve"


def test_host_not_on_this_machine_is_one_line(no_load, capsys):
    assert _demo_error(capsys, "--host", "192.0.2.7") == \
        "vocabseg demo: error: --host 192.0.2.7: not an address of this machine (use 127.0.0.1 or 0.0.0.0)"


def test_max_upload_mb_nan_is_one_line(no_load, capsys):
    assert _demo_error(capsys, "--max-upload-mb", "nan") == \
        "vocabseg demo: error: --max-upload-mb nan: use a positive number of MB"


def test_queue_size_zero_is_one_line(no_load, capsys):
    assert _demo_error(capsys, "--queue-size", "0") == "vocabseg demo: error: --queue-size 0: use at least 1"


def test_checkpoint_folders_are_offered_by_folder_name(tmp_path):
    from vocabseg.commands.demo import model_list
    a = save_checkpoint(load_model("segclip-tiny"), tmp_path / "a" / "san-tiny")
    b = save_checkpoint(load_model("segclip-tiny"), tmp_path / "b" / "san-tiny")
    models = model_list([str(a), "san-tiny", str(b), str(a)])
    assert list(models.items())[:3] == [("san-tiny (checkpoint)", str(Path(a).resolve())), ("san-tiny", "san-tiny"),
                                        ("san-tiny (checkpoint 2)", str(Path(b).resolve()))]


# --- the legend drawn beside the overlay ----------------------------------------------------
def test_page_overlay_has_no_legend_panel_under_the_buttons(tmp_path):
    """Scaled into the page, the panel beside a wide image was unreadable and its first
    entry hid under the image's buttons: the page's legend box lists the classes instead,
    and the downloaded overlay keeps its drawn legend."""
    cache = cb.ModelCache(lambda name: Segmenter(ToyModel(), name=name), ["toy"])
    res = cb.segment(cache, "toy", _stripes(tmp_path / "wide.png", w=400, h=60), "grass; sky", None,
                     cb.Limits(), tmp_path / "out")
    assert not res.error, res.message
    assert res.overlay.size == (400, 60)
    assert np.array_equal(np.array(res.overlay), np.array(res.view.semantic.overlay(legend=False)))
    assert sorted(n for _, n in res.legend) == ["grass", "sky"]
    saved = Image.open(next(f for f in res.files if f.endswith("_overlay.png")))
    assert saved.height == 60 and saved.width > 400 + 60


def test_legend_of_long_names_fits_beside_a_narrow_image():
    names = [f"{'a very long class name ' * 8}{i}"[:200] for i in range(12)]
    vocab = Vocabulary.parse("; ".join(names))
    labels = torch.arange(12).repeat_interleave(5).reshape(60, 1).expand(60, 16).clone()
    result = SemanticResult(labels, torch.ones(60, 16), vocab, torch.zeros(3, 60, 16, dtype=torch.uint8))
    overlay = result.overlay()
    assert overlay.width <= 16 + 8 + 3 * (34 + 260 + 12)        # was 1372 px: one 200-character name per row
    font = render._font(13)
    texts = [f"{c['name']}  {100 * c['share']:.1f}%" for c in result.summary()["classes"]]
    places, panel_w, panel_h = render.legend_layout(60, texts, font)
    assert overlay.size == (16 + panel_w, max(60, panel_h)) and len(places) == 12
    from PIL import ImageDraw
    draw = ImageDraw.Draw(overlay)
    boxes = [draw.textbbox((16 + x + 26, y + 2), t, font=font) for x, y, t in places]
    for (x0, y0, x1, y1), (_, _, t) in zip(boxes, places):
        assert 16 <= x0 and x1 <= overlay.width and 0 <= y0 and y1 <= overlay.height, t
        assert t.endswith("%")                                      # the share is never cut
    for i, a in enumerate(boxes):                                   # no entry overlaps another
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


