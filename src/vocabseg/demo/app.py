"""The Gradio page of ``vocabseg demo``: upload or pick an image, choose a model,
type a vocabulary (or pick a benchmark's), see the overlay with a clickable
legend, the label map and (FC-CLIP) the panoptic view, download PNG / JSON.

``build_app(factory, models, ...)`` makes the Blocks from a ``Segmenter``
factory; the work itself is in ``callbacks`` (no Gradio there). Gradio's
uploads and our results live in one temporary folder; nothing is fetched from
the internet (no analytics, system fonts only).
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402

from . import callbacks as cb  # noqa: E402

CSS_FILE = Path(__file__).with_name("style.css")
OWN_TEXT = "(type your own)"
INTRO = """# vocabseg — open-vocabulary segmentation
Upload an image, type the class names you want (`;` between classes, `,` between synonyms of one class,
e.g. `cat; sofa, couch; floor`) and press **Segment**. Click a class in the legend to highlight its region.
A new vocabulary on the same image reuses the image features, so it is fast."""


def theme():
    """Gradio's default look with system fonts (no web font is downloaded)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


def status_html(message: str, error: bool = False) -> str:
    kind = "error" if error else "info"
    return f'<div class="vs-status vs-{kind}">{"⚠ " if error else ""}{html.escape(message)}</div>'


def build_app(factory: Callable, models: Mapping[str, str] | Sequence[str], limits: cb.Limits = cb.Limits(),
              temp_dir: str | os.PathLike | None = None, examples: Sequence[str] = (),
              queue_size: int = 32, preload: bool = False) -> gr.Blocks:
    """The demo page. ``models``: the names offered in the page (the first is the
    default), or {name: what ``factory`` loads} (a zoo name or a checkpoint
    folder, never shown to a client); ``factory(target) -> Segmenter``. One model
    is held at a time, and a request naming anything not offered is refused.
    Results are written under ``temp_dir`` (which should also be
    ``GRADIO_TEMP_DIR``, set before gradio is imported); images are read only
    from Gradio's upload folder. ``preload`` loads the first model now, so a
    missing weight file fails before the page is served."""
    if not models:
        raise ValueError("build_app needs at least one model")
    temp_dir = Path(temp_dir or os.environ.get("GRADIO_TEMP_DIR") or "/tmp/vocabseg-demo")
    results_dir = temp_dir / "results"
    cache = cb.ModelCache(factory, models)
    names = list(cache.offered)
    if preload:
        cache.load(names[0])
    uploads = [get_upload_folder()]

    def tabs(model):
        return gr.Tab(visible=cache.can(model, "panoptic"))

    def on_segment(image, model, vocabulary, templates):
        out = cb.segment(cache, model, image, vocabulary, templates, limits, results_dir, uploads)
        if out.error:   # clear the previous result so it is not taken for this request's
            return (status_html(out.message, True), None, None, None, gr.Image(value=None, visible=False),
                    None, None, gr.skip())
        legend = gr.HighlightedText(value=out.legend, color_map=out.colors)
        pan = gr.Image(value=out.panoptic, visible=out.panoptic is not None)
        return (status_html(out.message), out.overlay, legend, out.labels, pan, out.files, out.view, tabs(model))

    def on_legend(view, evt: gr.SelectData):
        name = evt.value[1] if isinstance(evt.value, (list, tuple)) and len(evt.value) > 1 else None
        sem, pan = cb.highlight(view, name if evt.selected else None)
        return sem, (pan if pan is not None else gr.skip())

    def on_show_all(view):
        sem, pan = cb.highlight(view, None)
        return (sem if sem is not None else gr.skip()), (pan if pan is not None else gr.skip())

    with gr.Blocks(title="vocabseg demo", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                 elem_id="image-in", height=320)
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=image, label="Examples")
                model = gr.Dropdown(names, value=names[0], label="Model", elem_id="model")
                vocab = gr.Textbox(label="Vocabulary", lines=1, max_lines=6, elem_id="vocab",
                                   placeholder="cat; sofa, couch; floor; wall", max_length=40000,
                                   info="';' between classes, ',' between synonyms of one class")
                with gr.Row():
                    bench = gr.Dropdown([OWN_TEXT] + cb.benchmark_vocabularies(), value=OWN_TEXT,
                                        label="Benchmark vocabulary", elem_id="benchmark")
                    templates = gr.Dropdown(list(cb.TEMPLATE_CHOICES), value=cb.DEFAULT_TEMPLATES,
                                            label="Prompt templates", elem_id="templates")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column(scale=3):
                status = gr.HTML(status_html("Upload an image, type a vocabulary and press Segment."),
                                 elem_id="status")
                with gr.Tabs():
                    with gr.Tab("Overlay"):
                        overlay = gr.Image(label="Overlay", type="pil", format="png", interactive=False,
                                           elem_id="overlay")
                        legend = gr.HighlightedText(label="Legend: click a class to highlight its region",
                                                    show_legend=False, show_inline_category=False,
                                                    interactive=False, elem_id="legend")
                        show_all = gr.Button("Show all classes", size="sm", elem_id="show-all")
                    with gr.Tab("Label map"):
                        label_map = gr.Image(label="Label map (pixel value = class index)", type="pil",
                                             format="png", interactive=False, elem_id="label-map")
                    with gr.Tab("Panoptic", visible=cache.can(names[0], "panoptic"),
                                elem_id="panoptic-tab") as panoptic_tab:
                        gr.Markdown("Every thing instance is its own segment, outlined in white.")
                        panoptic = gr.Image(label="Panoptic", type="pil", format="png", interactive=False,
                                            visible=False, elem_id="panoptic")
                files = gr.File(label="Download (PNG / JSON)", file_count="multiple", interactive=False,
                                elem_id="files")
        view = gr.State(None, time_to_live=3600)

        outputs = [status, overlay, legend, label_map, panoptic, files, view, panoptic_tab]
        # preprocess=False: the image arrives as Gradio's file payload, unread, so a
        # corrupt upload is reported by callbacks.read_upload, not by Gradio. Gradio
        # then checks none of the fields: callbacks.segment checks each one.
        for trigger in (run.click, vocab.submit):
            trigger(on_segment, [image, model, vocab, templates], outputs, preprocess=False,
                    concurrency_id="model", concurrency_limit=1, api_name=False)
        model.change(tabs, model, panoptic_tab, api_name=False)
        bench.input(lambda name: cb.benchmark_text(name) if name != OWN_TEXT else gr.skip(), bench, vocab,
                    api_name=False)
        legend.select(on_legend, view, [overlay, panoptic], api_name=False)
        show_all.click(on_show_all, view, [overlay, panoptic], api_name=False)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           limits: cb.Limits = cb.Limits(), block: bool = True, quiet: bool = False):
    """Serve ``demo``; ``block=False`` returns once the server is up."""
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                       max_file_size=int(limits.max_upload_mb * 1e6), theme=theme(), css_paths=[CSS_FILE],
                       show_error=False, ssr_mode=False, quiet=quiet, footer_links=[],
                       state_session_capacity=200, mcp_server=False, pwa=False)
