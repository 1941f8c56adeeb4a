"""A report as a list of blocks, written both as Markdown and as one self-contained HTML page.

Figures are PNG files beside the page, referenced by relative path, so the folder opens from disk with
no server and can be zipped or copied as it is.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .store import mask_secrets

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; overflow-wrap: anywhere; }
th { background: #f0f0f0; font-size: 0.85em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
img.pixels { width: 100%; max-width: 900px; image-rendering: pixelated; }
.note { background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.5em 1em; }
ul.toc { columns: 2; font-size: 0.95em; }
"""

# lets a headless browser test read how many figures failed to load
CHECK_IMAGES = """
<script>
window.addEventListener("load", function () {
  var broken = Array.from(document.images).filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-images", document.images.length);
  document.body.setAttribute("data-broken-images", broken.length);
  // tables wider than the text column they sit in: each must fit
  var column = document.body.clientWidth;
  var wide = Array.from(document.querySelectorAll("table")).filter(function (t) { return t.offsetWidth > column; });
  document.body.setAttribute("data-wide-tables", wide.length);
});
</script>
"""


def anchor(text: str) -> str:
    """The id of a heading, as GitHub's Markdown makes it: lower case, spaces to '-', punctuation dropped."""
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


@dataclass
class Block:
    kind: str  # h1, h2, h3, p, note, figure, table, code, link, toc
    text: str = ""
    path: str = ""
    table: pd.DataFrame | None = None
    wide: bool = False  # small pixel images shown enlarged, without smoothing


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


class Document:
    def __init__(self, title: str, out: Path):
        self.title, self.out = title, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.blocks: list[Block] = [Block("h1", title), Block("toc")]
        self.sections = 0

    def h2(self, text: str, numbered: bool = True) -> None:
        """A section heading, numbered in the order the sections are written."""
        if numbered:
            self.sections += 1
            text = f"{self.sections}. {text}"
        self.blocks.append(Block("h2", text))

    def h3(self, text: str) -> None:
        self.blocks.append(Block("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(Block("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(Block("note", text))

    def code(self, text: str) -> None:
        self.blocks.append(Block("code", text))

    def link(self, text: str, url: str) -> None:
        """A line that links out, e.g. a run's page in the MLflow UI."""
        self.blocks.append(Block("link", text, path=url))

    def table(self, df: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(Block("table", caption, table=df))

    def figure(self, fig, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        fig.savefig(self.out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.blocks.append(Block("figure", caption, path=name))

    def image(self, name: str, caption: str, wide: bool = False) -> None:
        """A PNG already written into the report folder."""
        self.blocks.append(Block("figure", caption, path=name, wide=wide))

    def _sections(self) -> list[str]:
        return [b.text for b in self.blocks if b.kind == "h2"]

    def markdown(self) -> str:
        parts = []
        for b in self.blocks:
            if b.kind == "toc":
                parts.append("\n".join(f"- [{t}](#{anchor(t)})" for t in self._sections()))
            elif b.kind == "link":
                parts.append(f"[{b.text}]({b.path})")
            elif b.kind in ("h1", "h2", "h3"):
                parts.append("#" * int(b.kind[1]) + " " + b.text)
            elif b.kind == "p":
                parts.append(b.text)
            elif b.kind == "note":
                parts.append("> " + b.text)
            elif b.kind == "code":
                parts.append("```\n" + b.text + "\n```")
            elif b.kind == "table":
                parts.append((f"{b.text}\n\n" if b.text else "") + _md_table(b.table))
            elif b.kind == "figure":
                parts.append(f"![{b.text}]({b.path})\n\n*{b.text}*")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        parts = []
        for b in self.blocks:
            if b.kind == "toc":
                items = "".join(f'<li><a href="#{anchor(t)}">{html.escape(t)}</a></li>' for t in self._sections())
                parts.append(f'<nav><ul class="toc">{items}</ul></nav>')
            elif b.kind == "link":
                parts.append(f'<p><a href="{html.escape(b.path)}">{html.escape(b.text)}</a></p>')
            elif b.kind == "h2":
                parts.append(f'<h2 id="{anchor(b.text)}">{html.escape(b.text)}</h2>')
            elif b.kind in ("h1", "h3"):
                parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
            elif b.kind == "p":
                parts.append(f"<p>{html.escape(b.text)}</p>")
            elif b.kind == "note":
                parts.append(f'<p class="note">{html.escape(b.text)}</p>')
            elif b.kind == "code":
                parts.append(f"<pre>{html.escape(b.text)}</pre>")
            elif b.kind == "table":
                caption = f"<p>{html.escape(b.text)}</p>" if b.text else ""
                parts.append(caption + b.table.to_html(index=False, border=0, na_rep="-"))
            elif b.kind == "figure":
                wide = ' class="pixels"' if b.wide else ""
                parts.append(f'<figure><img{wide} src="{html.escape(b.path)}" alt="{html.escape(b.text)}">'
                             f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
        body = "\n".join(parts)
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
                f"</title><style>{CSS}</style></head>\n<body>\n{body}\n{CHECK_IMAGES}</body></html>\n")

    def write(self) -> tuple[Path, Path]:
        md, page = self.out / "report.md", self.out / "index.html"
        # what the runs recorded goes on a page that is shared: a password a URL in it may hold does not
        md.write_text(mask_secrets(self.markdown()))
        page.write_text(mask_secrets(self.html()))
        return md, page
