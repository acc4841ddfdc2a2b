"""Every ```python and ```bash block of README.md is run (or, for long-running commands,
checked) here, so that the documentation cannot drift from the API again.

What is changed to make a snippet runnable, and nothing else:
- a full-size zoo model (``san-vit-b16``, ``fcclip-convnext-l``, ...) becomes its tiny preset, and a
  command that relies on the default model gets ``--model san-tiny``;
- a published weight file (``WEIGHTS``) becomes a saved tiny checkpoint of the same model
  (loading published files is tested by the converters' tests);
- ``~`` is a temporary home whose ``downloads/`` holds synthetic raw downloads
  (``vocabseg.testing.write_raw``) for ``vocabseg prepare``;
- the working directory is a temporary folder with ``photo.jpg``, ``more_photos/``,
  ``classes.txt``, ``runs/my-san/model`` and ``runs/shapes/model`` (a tiny FC-CLIP), and ``$VOCABSEG_DATASETS`` holds a synthetic
  copy (``write_benchmark``) of every benchmark a snippet names.

Python blocks run in README order in one namespace, as a reader's session would. Shell lines
run ``vocabseg segment | models | eval | prepare | inspect-dataset`` and ``python -m vocabseg.testing.*``
in-process and must exit 0. Commands that
train, serve, benchmark for minutes, launch processes or install (``LONG``, torchrun, make, pip,
benchmarks/*.py) are checked, not run (``check``): their arguments must parse with vocabseg's own
parser, and the scripts, make targets, extras and config files they name must exist. Running the
snippets takes minutes on tiny models (they are ``slow``); ``test_readme_snippets_are_current``
is the quick check. A block right after ``<!-- not-run: REASON -->`` is skipped (none today).
"""
import os
import re
import shutil
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MODEL_RE = re.compile(r"\b(san|fcclip|segclip|maskclip|sclip|clearclip|naclip|catseg|proxyclip)-"
                      r"(?:vit-[blh]\d+|convnext-l)(?:-dino\w*)?\b(?!\.yaml)")
WEIGHTS = {"san_vit_b_16.pth": "san-tiny", "fcclip_cocopan.pth": "fcclip-tiny", "model_base.pth": "catseg-tiny"}
RAW = {"voc": "voc", "pcontext": "pcontext", "pcontext-full": "pcontext-full", "ade20k": "ade20k",
       "ade20k-full": "ade20k-full", "coco-stuff": "coco", "coco-object": "coco", "coco-panoptic": "coco",
       "cityscapes": "cityscapes"}            # `vocabseg prepare KIND SRC` -> write_raw kind
RUN = ("segment", "models", "eval", "prepare", "inspect-dataset")
LONG = {"train": "trains for hours", "demo": "serves until stopped", "bench": "measures for minutes"}
SCRIPTS = {"benchmarks/speed.py": ["bench", "--all"]}     # scripts that are a vocabseg command


def blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, code) of each fenced python / bash / sh block not marked not-run."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(python|bash|sh|shell)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not prev.strip().startswith("<!-- not-run:"):
            out.append((i + 1, m.group(1), "\n".join(lines[i + 1:end])))
        i = end + 1
    return out


def runnable(code: str, ckpts: dict) -> str:
    code = MODEL_RE.sub(lambda m: f"{m.group(1)}-tiny", code)
    for name in re.findall(r"[\w.~/-]*?([\w-]+\.pth)\b", code):
        assert name in WEIGHTS, f"README names weight file {name}: add it to WEIGHTS in {__file__}"
    return re.sub(r"[\w.~/-]*?([\w-]+\.pth)\b", lambda m: str(ckpts[WEIGHTS[m.group(1)]]), code)


def commands(code: str) -> list[list[str]]:
    """Shell lines (``\\`` continuations joined, comments dropped, ``~/`` expanded) -> argv lists."""
    argvs = [shlex.split(line, comments=True) for line in code.replace("\\\n", " ").splitlines()]
    return [[os.path.expanduser(a) if a.startswith("~/") else a for a in argv] for argv in argvs if argv]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The temporary world the snippets run in (see the module docstring)."""
    from vocabseg.checkpoint import save_checkpoint
    from vocabseg.registry import get_spec
    from vocabseg.testing import write_benchmark
    base = tmp_path_factory.mktemp("readme")
    ckpts = {m: save_checkpoint(get_spec(m).build(), base / "ck" / m) for m in set(WEIGHTS.values())}
    work = base / "work"
    (work / "more_photos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for p in (work / "photo.jpg", work / "more_photos/street.jpg"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
    (work / "classes.txt").write_text("road\ncar, truck\nperson\n")
    save_checkpoint(get_spec("san-tiny").build(), work / "runs/my-san/model")
    save_checkpoint(get_spec("fcclip-tiny").build(), work / "runs/shapes/model")    # "Your own data"
    text = README.read_text()
    for name in sorted(_datasets(text)):
        write_benchmark(name, base / "datasets", num_images=2)
    return {"base": base, "work": work, "ckpts": ckpts, "text": text}


def _datasets(text: str) -> set[str]:
    from vocabseg.data.benchmarks import BENCHMARKS
    names = set()
    for _, lang, code in blocks(text):
        for argv in (commands(code) if lang != "python" else []):
            if "--dataset" in argv:
                names |= {a for a in argv[argv.index("--dataset") + 1:] if a in BENCHMARKS}
        names |= set(re.findall(r"get_dataset\(\"([\w-]+)\"", code))
    return names


@pytest.fixture
def world(session, monkeypatch):
    monkeypatch.chdir(session["work"])
    monkeypatch.setenv("HOME", str(session["base"] / "home"))
    monkeypatch.setenv("VOCABSEG_DATASETS", str(session["base"] / "datasets"))
    return session


def check(argv: list[str], where: str) -> None:
    """A command that is not run (``LONG``, torchrun, make, pip, scripts): what it names exists
    and its arguments parse."""
    from vocabseg.cli import build_parser
    if argv[0] == "torchrun":                   # launches processes: the vocabseg part must parse
        argv = ["vocabseg", *argv[argv.index("vocabseg.cli") + 1:]]
    if argv[0] == "make":
        assert re.search(rf"^{argv[1]}:", (REPO / "Makefile").read_text(), re.M), where
    elif argv[0] == "pip":
        extras = re.findall(r"\[(\w+)\]", argv[-1])
        assert all(re.search(rf"^{e} = ", (REPO / "pyproject.toml").read_text(), re.M) for e in extras), where
    elif argv[0].endswith("python") and argv[1] == "-m":   # a vocabseg module's command line
        import importlib
        assert argv[2].startswith("vocabseg.") and callable(importlib.import_module(argv[2]).main), where
    elif argv[0].endswith("python"):            # benchmarks/*.py
        if argv[1] in SCRIPTS:
            build_parser().parse_args([*SCRIPTS[argv[1]], *argv[2:]])
        else:
            script = (REPO / argv[1]).read_text()
            assert all(f'"{a}"' in script for a in argv[2:] if a.startswith("--")), where
    elif argv[0] == "vocabseg":
        assert argv[1] in RUN or argv[1] in LONG, f"{where}: add the command to RUN or LONG"
        build_parser().parse_args(argv[1:])
        assert all((REPO / a).is_file() for a in argv if a.startswith("configs/")), where
    else:
        raise AssertionError(f"{where}: unknown command; teach {__file__} to run or check it")


def test_readme_snippets_are_current():
    """Quick: python blocks compile, their imports run and every ``vocabseg.NAME`` they use
    exists; every shell line parses (``check``)."""
    import importlib
    import vocabseg
    found = blocks(README.read_text())
    assert sum(lang == "python" for _, lang, _ in found) >= 3 and len(found) >= 10
    for line, lang, code in found:
        if lang == "python":
            compile(code, f"README.md:{line}", "exec")
            for mod, names in re.findall(r"^from (vocabseg[\w.]*) import (.+)$", code, re.M):
                module = importlib.import_module(mod)
                assert all(hasattr(module, n.strip()) for n in names.split("#")[0].split(",")), (line, mod, names)
            for attr in re.findall(r"\bvocabseg\.(\w+)", code):
                assert hasattr(vocabseg, attr), f"README.md:{line}: vocabseg.{attr} does not exist"
        else:
            for argv in commands(code):
                check(argv, f"README.md:{line}: {' '.join(argv)}")


@pytest.mark.slow
def test_readme_python_snippets_run(world):
    namespace: dict = {}
    for line, lang, code in blocks(world["text"]):
        if lang == "python":
            try:
                exec(compile(runnable(code, world["ckpts"]), f"README.md:{line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"README.md python block at line {line} fails: {type(e).__name__}: {e}")


@pytest.mark.slow
def test_readme_shell_snippets_run(world, capsys):
    from vocabseg.cli import main
    from vocabseg.testing import write_raw
    # the Python snippets' result.save wrote outputs/photo*: files `segment` rightly will not replace
    shutil.rmtree(world["work"] / "outputs", ignore_errors=True)
    for line, lang, code in blocks(world["text"]):
        if lang == "python":
            continue
        for argv in commands(runnable(code, world["ckpts"])):
            where = f"README.md:{line}: {' '.join(argv)}"
            if argv[0] == "python" and argv[1] == "-m" and argv[2].startswith("vocabseg.testing."):
                import importlib                # writes example data: run, in-process
                assert importlib.import_module(argv[2]).main(argv[3:]) == 0, where
                continue
            if argv[0] != "vocabseg" or argv[1] not in RUN:
                check(argv, where)
                continue
            if argv[1] in ("segment", "eval") and "--model" not in argv:
                argv += ["--model", "san-tiny"]
            if argv[1] == "prepare":
                write_raw(RAW[argv[2]], Path(argv[3]).parent)   # writes <parent>/<the download's folder>
            code_ = main(argv[1:])
            err = capsys.readouterr().err
            assert code_ == 0, f"{where} exits {code_}: {err.strip()[-300:]}"
