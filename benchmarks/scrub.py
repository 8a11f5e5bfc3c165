"""Remove the paths of the machine that made a result (checkout, interpreter, cache, temp, home).

    python benchmarks/scrub.py DIR        # rewrite the text files under DIR in place

Committed results must not say where they were made: ``/work/...``, ``/root/...``, ``/tmp/...``
become ``<repo>``, ``<python>``, ``<cache>``, ``<tmp>``, ``~``. Binary files are left alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".log", ".txt", ".xml", ".csv", ".yaml"}
REPO = Path(__file__).resolve().parent.parent


def _prefixes() -> list[tuple[str, str]]:
    cache = os.environ.get("KITREC_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kitrec_fast")
    pairs = [(str(REPO), "<repo>"), (sys.prefix, "<python>"), (sys.base_prefix, "<python>"),
             (os.path.realpath(sys.prefix), "<python>"), (cache, "<cache>"), (os.path.realpath(cache), "<cache>"),
             (tempfile.gettempdir(), "<tmp>"), ("/tmp", "<tmp>"), (os.path.expanduser("~"), "~")]
    for site in sys.path:  # e.g. /tmp/site on the GPU machine
        if site.startswith("/") and os.path.isdir(site) and site not in ("/",):
            pairs.append((site, "<site>"))
    # longest first, so /work/x/.venv becomes <python> before /work/x becomes <repo>
    pairs = [(a.rstrip("/"), b) for a, b in pairs if a and a.rstrip("/") not in ("", "/")]
    return sorted(dict(pairs).items(), key=lambda kv: -len(kv[0]))


def scrub_text(text: str) -> str:
    for prefix, tag in _prefixes():
        text = text.replace(prefix, tag)
    return text


def scrub_dir(root: Path) -> int:
    changed = 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="replace")
            new = scrub_text(text)
            if new != text:
                from kitrec_fast.fsio import atomic_write_text

                atomic_write_text(path, new)
                changed += 1
    return changed


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    for arg in sys.argv[1:]:
        print(f"{arg}: {scrub_dir(Path(arg))} file(s) rewritten")
