"""Which files in an output folder vocabseg wrote, and for which image.

`vocabseg segment` keeps a manifest, ``.vocabseg-manifest.json`` in ``--out``:
``{"files": {output file name: {"source": absolute path of the source image,
"stat": [size, mtime_ns]}}}``. A file in ``--out`` is vocabseg's own only if the
manifest lists it and it is unchanged since (a label map corrected by hand is the
user's); it is replaced without asking only when it holds the result of the same
source image (a rerun of the same command). Anything else is refused unless
``--overwrite``. Reading a folder skips the files its manifest lists, so a rerun
into the input folder does not segment its own outputs.
"""
from __future__ import annotations

import itertools
import json
import os
import unicodedata
from pathlib import Path

from .errors import UserError
from .files import atomic_write

MANIFEST = ".vocabseg-manifest.json"
SUFFIXES = {   # output file name = stem + suffix, per task (results.py writes them)
    "semantic": ("_labels.png", "_overlay.png", ".json"),
    "panoptic": ("_panoptic.png", "_panoptic.json", "_overlay.png"),
    "instance": ("_instances.json", "_overlay.png"),
}
SCORES, GROUPS = "_scores.npy", "_groups.png"
MAX_NAME = 239        # bytes: NAME_MAX 255 less atomic_write's ".{name}.tmp{pid}"


def source_id(path: str | os.PathLike) -> str:
    """How a source image is recorded: its absolute path, symlinks resolved."""
    return str(Path(path).resolve())


def read_manifest(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: source} of the files vocabseg wrote in ``folder`` and nobody changed
    since (size and modification time as recorded); {} when there is no manifest or it
    cannot be read (then no file there counts as vocabseg's)."""
    try:
        files = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(files, dict):
        return {}
    own = {}
    for name, entry in files.items():
        if isinstance(entry, str):              # claimed by a run that did not finish
            own[name] = entry
        elif isinstance(entry, dict) and isinstance(entry.get("source"), str) and \
                entry.get("stat") == _stat(Path(folder) / name):
            own[name] = entry["source"]
    return own


def write_manifest(folder: str | os.PathLike, files: dict[str, str], claimed=()) -> None:
    """Record ``files`` ({name: source}) as vocabseg's, each with its current size and
    modification time (an edited file is the user's again); names in ``claimed`` are
    about to be written and recorded without them."""
    folder = Path(folder)
    entries = {n: s if n in claimed or _stat(folder / n) is None else {"source": s, "stat": _stat(folder / n)}
               for n, s in sorted(files.items())}
    atomic_write(folder / MANIFEST, json.dumps({"files": entries}, indent=1))


def _stat(path: Path) -> list | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _key(name: str) -> str:
    """Names that are one file on macOS / Windows (case, composed or decomposed accents) share a key."""
    return unicodedata.normalize("NFC", name).casefold()


def _cut(stem: str, room: int) -> str:
    """``stem`` shortened to at most ``room`` UTF-8 bytes (on a character boundary)."""
    return stem.encode()[:room].decode(errors="ignore")


def plan_names(paths: list[Path], suffixes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """One output stem per input such that no two inputs share an output file name
    (compared ignoring case and accent composition, as macOS and Windows do) and no name is too long.
    A repeated stem becomes ``<folder>_<stem>`` (inputs in other folders),
    ``<stem>_<ext>`` (x.png and x.jpg) or ``<stem>_<n>``. Returns (stems, notes)."""
    room = MAX_NAME - max(len(s.encode()) for s in suffixes)
    taken = {_key(MANIFEST)}
    parents: dict[str, set] = {}
    stems, notes = [], []
    for p in paths:
        base = _cut(p.stem, room)
        same_folder = p.parent.resolve() in parents.get(_key(base), set())
        by_folder = [f"{p.parent.resolve().name}_{base}"] if p.parent.resolve().name else []
        by_ext = [f"{base}_{p.suffix[1:]}"] if p.suffix[1:] else []
        extra = by_ext + by_folder if same_folder else by_folder + by_ext
        numbered = (_cut(base, room - 8) + f"_{n}" for n in itertools.count(2))
        for stem in itertools.chain([base], (_cut(c, room) for c in extra), numbered):
            names = {_key(stem + s) for s in suffixes}
            if not names & taken:
                break
        taken |= names
        parents.setdefault(_key(base), set()).add(p.parent.resolve())
        stems.append(stem)
        if stem != p.stem:
            why = "another input has the same name" if stem != base else "its name is too long"
            notes.append(f"{p} is written as {stem}* ({why})")
    return stems, notes


def check_targets(out: Path, planned: list[tuple[Path, str]], suffixes: tuple[str, ...], overwrite: bool) -> None:
    """Refuse (one line) when an output would replace a file vocabseg did not write
    for the same source image, unless ``overwrite``; a folder in the way is always refused."""
    own = read_manifest(out)
    clashes = []
    for path, stem in planned:
        for s in suffixes:
            target = out / (stem + s)
            if not os.path.lexists(target):
                continue
            if target.is_dir() and not target.is_symlink():
                raise UserError(f"cannot write {target}: a folder of that name is in the way")
            if not overwrite and own.get(target.name) != source_id(path):
                owner = own.get(target.name)
                why = f"holds vocabseg's result for {owner}, not {path}" if owner else "was not written by vocabseg"
                clashes.append(f"{target} {why}")
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UserError(f"{clashes[0]}{more}; use --overwrite to replace, or another --out")


def check_out_folder(name: str | os.PathLike) -> Path:
    """``name`` is (or is made) a folder that can be written into; else one line."""
    if not str(name).strip():
        raise UserError("--out is empty: give an output folder")
    out = Path(name).expanduser()       # --out=~/results is not expanded by the shell
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".vocabseg-probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write into --out {out}: {e.strerror or e}") from None
    return out
