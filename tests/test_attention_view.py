"""The attention page and its JSON: the data against forward(output_attentions=True), the summaries against
their definitions, the page's embedded data, and the page itself driven in headless Chromium when one is
installed (Debian: apt-get install chromium)."""

import html.parser
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from minibert.analysis import attention_view
from minibert.cli import main

TEXT, PAIR = "The cat sat on the mat.", "Where did it sit?"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@pytest.fixture(scope="module")
def model(model_for):
    return model_for("cpu")


@pytest.fixture(scope="module")
def data(model):
    return attention_view.attention_data(model, TEXT, PAIR)


def test_data_is_forwards_attention(model, data):
    out = model([TEXT], [PAIR], output_attentions=True)
    probs = np.stack([a[0] for a in out.attentions]).astype(np.float64)       # [L, NH, T, T]
    got = np.array(data["attention"])
    assert got.shape == probs.shape == (6, 12, len(data["tokens"]), len(data["tokens"]))
    assert np.abs(got - probs).max() <= 5e-6                                    # rounded to 5 decimals
    tokens = data["tokens"]
    assert tokens[data["cls"]] == "[CLS]" and [tokens[i] for i in data["sep"]] == ["[SEP]", "[SEP]"]
    first_sep = data["sep"][0]
    assert data["segments"] == [-1] + [0] * (first_sep - 1) + [-1] + [1] * (len(tokens) - first_sep - 2) + [-1]
    # The summaries, recomputed from their definitions.
    entropy = np.array([[np.mean([-sum(p * math.log(p) for p in row if p > 0) for row in head]) for head in layer]
                        for layer in probs])
    np.testing.assert_allclose(data["entropy"], entropy, atol=1e-5)
    np.testing.assert_allclose(data["to_cls"], probs[..., :, 0].mean(-1), atol=1e-5)
    np.testing.assert_allclose(data["to_sep"], probs[..., :, data["sep"]].sum(-1).mean(-1), atol=1e-5)


def test_head_summaries_at_the_extremes():
    T = 5
    uniform = np.full((1, 1, T, T), 1 / T)
    one_hot = np.broadcast_to(np.eye(T)[0], (1, 1, T, T))                       # everyone looks at token 0
    assert attention_view.head_summaries(uniform, 0, [T - 1])[0][0, 0] == pytest.approx(math.log(T))
    entropy, to_cls, to_sep = attention_view.head_summaries(one_hot, 0, [T - 1])
    assert entropy[0, 0] == 0 and to_cls[0, 0] == 1 and to_sep[0, 0] == 0


def embedded(page):
    start = page.index('<script type="application/json" id="minibert-data">') + len(
        '<script type="application/json" id="minibert-data">')
    return json.loads(page[start:page.index("</script>", start)])


def test_page_is_self_contained_and_embeds_the_data(data):
    page = attention_view.render_html(data)
    assert embedded(page) == data
    # Nothing fetched: no external scripts, styles, images or fonts (the SVG namespace is only a name).
    assert not re.search(r"<link|\bsrc=|@import|url\(", page)
    assert set(re.findall(r"https?://[^\s\"'`]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_text_cannot_close_the_data_script(model):
    nasty = "</script><script>alert(1)</script>"
    data = attention_view.attention_data(model, nasty)
    page = attention_view.render_html(data)
    assert embedded(page)["text"] == nasty


@pytest.mark.parametrize("nasty", ["<!--<script>", "x</SCRIPT >y", "<script>a</script>", "&lt;/script&gt;", "]]> -->"])
def test_no_text_can_end_or_open_a_script_element_in_the_data(model, nasty):
    """Inside a script element, "</script" ends it, and "<!--" followed by "<script" makes the browser look for
    two ends: the embedded data holds no "<" (nor ">", "&") at all, and reads back as the same data."""
    data = attention_view.attention_data(model, "a " + nasty, nasty)
    page = attention_view.render_html(data)
    start = page.index('<script type="application/json" id="minibert-data">') + len(
        '<script type="application/json" id="minibert-data">')
    block = page[start:page.index("</script>", start)]
    assert not set(block) & set("<>&")
    assert json.loads(block) == data


def test_truncated_text_and_large_page_warn(model, monkeypatch):
    with pytest.warns(UserWarning, match="cut to 8 tokens") as caught:
        data = attention_view.attention_data(model, "one two three four five six seven eight nine ten", max_length=8)
    assert data["truncated"] and caught[0].filename == __file__
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = attention_view.render_html(data)                 # 20 MB and more warn; this page is far smaller
    monkeypatch.setattr(attention_view, "PAGE_WARN_BYTES", len(page.encode()) - 1)
    with pytest.warns(UserWarning, match=r"6 layers x 12 heads x 8\^2 tokens.*browsers may be slow"):
        attention_view.render_html(data)


def test_attention_command_writes_both(tmp_path, capsys):
    html_path, json_path = tmp_path / "a.html", tmp_path / "a.json"
    assert main(["attention", TEXT, "--pair", PAIR, "--html", str(html_path), "--json", str(json_path)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(json_path.read_text())
    assert saved["format"] == "minibert-attention/1" and saved["pair"] == PAIR
    assert embedded(html_path.read_text()) == saved
    assert printed.splitlines()[0] == f"{len(saved['tokens'])} tokens, 6 layers x 12 heads"
    assert main(["attention", TEXT]) == 1                                     # neither --html nor --json


# ----- in a real browser ---------------------------------------------------------------------------------------

def find_browser():
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class Elements(html.parser.HTMLParser):
    """Every start tag's attributes, by tag name."""
    def __init__(self):
        super().__init__()
        self.found = {}

    def handle_starttag(self, tag, attrs):
        self.found.setdefault(tag, []).append(dict(attrs))


def render_in_browser(browser, page_path, fragment=""):
    """Open the page in headless Chromium, let its scripts run, and return the elements of the live DOM."""
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                             "--dump-dom", page_path.as_uri() + fragment],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    parser = Elements()
    parser.feed(result.stdout)
    return parser.found


def shown(found, tag):
    """(layer index, head) the page says it shows, and the drawn weights by (query, key)."""
    [status] = [a for a in found["span"] if a.get("id") == "status"]
    weights = {(int(a["data-i"]), int(a["data-j"])): float(a["data-w"]) for a in found.get(tag, []) if "data-w" in a}
    return (int(status["data-layer"]), int(status["data-head"])), weights


def check_weights(weights, matrix, drawn_above=0.0):
    expected = {(i, j): w for i, row in enumerate(matrix) for j, w in enumerate(row) if w >= drawn_above}
    assert weights.keys() == expected.keys()
    assert all(weights[key] == pytest.approx(expected[key], abs=1e-12) for key in expected)


@pytest.fixture(scope="module")
def browser():
    path = find_browser()
    if path is None:
        pytest.skip("no Chromium/Chrome found (Debian: apt-get install chromium); the page was checked in Python only")
    return path


def test_page_renders_and_switches_in_chromium(browser, data, tmp_path):
    page = tmp_path / "attention.html"
    page.write_text(attention_view.render_html(data))
    # 1. Chosen by the URL: layer 2 (counted from 1, as on the page), head 5, as lines.
    found = render_in_browser(browser, page, "#layer=2&head=5&view=lines")
    where, weights = shown(found, "line")
    assert where == (1, 5)
    check_weights(weights, data["attention"][1][5], drawn_above=0.01)         # lines below 1% are not drawn
    # 2. Switched with the selectors, as a person would: layer 5, head 7, heatmap.
    script = """<script>
      for (const [id, value] of [["layer", "4"], ["head", "7"], ["view", "heatmap"]]) {
        const select = document.getElementById(id);
        select.value = value;
        select.dispatchEvent(new Event("change"));
      }
    </script></body>"""
    page.write_text(attention_view.render_html(data).replace("</body>", script))
    where, weights = shown(render_in_browser(browser, page), "td")
    assert where == (4, 7)
    check_weights(weights, data["attention"][4][7])
    # 3. Switched by clicking a cell of the every-head grid.
    click = ("""<script>document.querySelector('#headgrid td[data-layer="0"][data-head="11"]').click();"""
             """</script></body>""")
    page.write_text(attention_view.render_html(data).replace("</body>", click))
    where, weights = shown(render_in_browser(browser, page), "td")
    assert where == (0, 11)
    check_weights(weights, data["attention"][0][11])
