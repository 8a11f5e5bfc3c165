"""MkDocs hooks: the site's ``repo_url`` is pyproject.toml's ``Repository`` address (written there
only), and ``repo:PATH`` links (source files, committed results) point into that repository, so no
page links outside docs/ by a relative path."""

import re
import tomllib
from pathlib import Path

_REPO_LINK = re.compile(r"\]\(repo:([^)\s]*)\)")


def on_config(config):
    pyproject = Path(config["config_file_path"]).parent / "pyproject.toml"
    config["repo_url"] = tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]
    return config


def on_page_markdown(markdown, page, config, files):
    base = config["repo_url"].rstrip("/")

    def absolute(match):
        path = match.group(1)
        kind = "tree" if not path or path.endswith("/") else "blob"
        return f"]({base}/{kind}/main/{path})"

    return _REPO_LINK.sub(absolute, markdown)
