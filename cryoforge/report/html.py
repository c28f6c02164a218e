"""``report.html``: one self-contained page (pictures inline as data URIs) that opens from disk."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryoforge.io.atomic import atomic_path

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; background: #fff; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.truth { color: #7a3b00; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
code { background: #f3f3f3; padding: 0 0.2em; }
.broken { color: #b00; font-weight: bold; }
"""

# Marks every image with its decoded width (data-natural-width) once the page has loaded, and
# says so next to any image that failed to decode.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img');
  var ok = 0;
  imgs.forEach(function (img) {
    img.setAttribute('data-natural-width', String(img.naturalWidth));
    if (img.naturalWidth > 0) { ok += 1; } else {
      var p = document.createElement('p'); p.className = 'broken';
      p.textContent = 'this picture could not be shown'; img.after(p);
    }
  });
  document.body.setAttribute('data-images-decoded', ok + '/' + imgs.length);
});
"""


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append("<tr>" + "".join(f"<td{cls}>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_report(
    title: str,
    pictures: Sequence[tuple[str, Path]],
    metrics: Sequence[tuple[str, str, bool]],
    outputs: Sequence[tuple[str, str]],
    config: dict[str, Any] | None,
    plugins: dict[str, str] | None,
    notes: Sequence[str] = (),
) -> str:
    """The report as one HTML string with no external references.

    Parameters
    ----------
    title
        Page title and heading.
    pictures
        ``(caption, PNG path)``; missing files are left out.
    metrics
        ``(name, value, vs_ground_truth)`` rows; ground-truth metrics are marked as such.
    outputs
        ``(what, file name)`` of the run's files, relative to the report's folder.
    config, plugins
        The resolved run configuration and plugin → version.
    notes
        Lines shown under the heading (warnings, how to open the map).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by cryoforge.</p>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    shown = [(c, p) for c, p in pictures if p.is_file()]
    if shown:
        parts.append("<h2>Pictures</h2>")
        for caption, p in shown:
            parts.append(
                f'<figure><img src="{data_uri(p)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)} ({html.escape(p.name)})</figcaption></figure>"
            )
    parts.append("<h2>Metrics</h2>")
    if metrics:
        rows = [(name, value, "vs ground truth" if truth else "") for name, value, truth in metrics]
        parts.append(
            _table(rows, ("metric", "value", "measured"), ["truth" if t else "" for *_, t in metrics])
        )
    else:
        parts.append("<p>No metrics yet.</p>")
    if outputs:
        parts.append("<h2>Files</h2>")
        parts.append(_table(outputs, ("what", "file (in this folder)")))
    if plugins:
        parts.append("<h2>Plugins</h2>")
        parts.append(_table(sorted(plugins.items()), ("plugin", "version")))
    if config is not None:
        parts.append("<h2>Resolved configuration</h2>")
        text = json.dumps(config, indent=2, ensure_ascii=False)
        parts.append(f"<pre>{html.escape(text, quote=False)}</pre>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(path: Path, **kwargs: Any) -> Path:
    """Write :func:`render_report` ``(**kwargs)`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(render_report(**kwargs), encoding="utf-8")
    return path
