"""Remove the paths of the machine that made a result (checkout, interpreter, cache, temp, home).

    python benchmarks/gpu/scrub.py DIR        # rewrite the text files under DIR in place

Committed results must not say where they were made: ``/work/...``, ``/root/...``, ``/tmp/...``
become ``<repo>``, ``<python>``, ``<cache>``, ``<tmp>``, ``~``. Binary files are left alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".log", ".txt", ".xml", ".csv", ".yaml"}
REPO = Path(__file__).resolve().parents[2]


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder)


def _prefixes() -> list[tuple[str, str]]:
    cache = os.environ.get("KITREC_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kitrec_fast")
    pairs = [(str(REPO), "<repo>"), (sys.prefix, "<python>"), (sys.base_prefix, "<python>"),
             (os.path.realpath(sys.prefix), "<python>"), (cache, "<cache>"), (os.path.realpath(cache), "<cache>"),
             (tempfile.gettempdir(), "<tmp>"), ("/tmp", "<tmp>"), (os.path.expanduser("~"), "~")]
    for site in sys.path:  # e.g. /tmp/site on the GPU machine
        # folders inside the checkout (tests/, benchmarks/ on sys.path) read as <repo>/...
        if site.startswith("/") and os.path.isdir(site) and site not in ("/",) and not _inside(site, REPO):
            pairs.append((site, "<site>"))
    # the first name of a folder wins: the checkout is also on sys.path (PYTHONPATH) and stays <repo>
    tags: dict[str, str] = {}
    for a, b in pairs:
        if a and a.rstrip("/") not in ("", "/"):
            tags.setdefault(a.rstrip("/"), b)
    # longest first, so /work/x/.venv becomes <python> before /work/x becomes <repo>
    return sorted(tags.items(), key=lambda kv: -len(kv[0]))


def scrub_text(text: str, xml: bool = False) -> str:
    """``text`` with this machine's paths replaced; ``xml``: the tags escaped, so a JUnit report stays
    well-formed (a bare ``<repo>`` inside an attribute is not XML)."""
    for prefix, tag in _prefixes():
        text = text.replace(prefix, tag.replace("<", "&lt;").replace(">", "&gt;") if xml else tag)
    return text


def scrub_dir(root: Path) -> int:
    changed = 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="replace")
            new = scrub_text(text, xml=path.suffix == ".xml")
            if new != text:
                from kitrec_fast.fsio import atomic_write_text

                atomic_write_text(path, new)
                changed += 1
    return changed


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    for arg in sys.argv[1:]:
        print(f"{arg}: {scrub_dir(Path(arg))} file(s) rewritten")
