"""The evaluation page: one self-contained file with the facts, baselines, per-genre AP and posters."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from posterlens import __version__
from posterlens.workflows import report
from posterlens.workflows.evaluate import evaluate

CHROMIUM = shutil.which("chromium") or next((p for p in ("/usr/bin/chromium",) if Path(p).is_file()), None)
LINK_ATTRIBUTES = {"src", "href", "srcset", "data", "poster", "action", "background", "xlink:href"}


class ParsedPage(HTMLParser):
    """Every element's attributes, the page's text, and each table's rows as (cell text, cell class)."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell, self._class = [], attrs.get("class", "")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append((" ".join("".join(self._cell).split()), self._class))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())

    def images(self, mime: str) -> list[dict]:
        return [a for tag, a in self.elements if tag == "img" and a.get("src", "").startswith(f"data:{mime};base64,")]

    def row(self, table: str, name: str) -> list[tuple[str, str]]:
        return next(r for r in self.tables[table] if r[0][0] == name)


@pytest.fixture(scope="module")
def evaluated(trained_model, sample_dir, shared_cache, tmp_path_factory):
    """The evaluation of the test model on its holdout: (metrics, report folder, parsed page)."""
    out = tmp_path_factory.mktemp("report")
    result = evaluate(trained_model, sample_dir / "MovieGenre.csv", None, out, shared_cache, progress=False)
    return result.metrics, out, ParsedPage(result.report.read_text(encoding="utf-8"))


def test_report_references_no_local_file(evaluated):
    _, out, page = evaluated
    links = [(tag, k, v) for tag, attrs in page.elements for k, v in attrs.items() if k in LINK_ATTRIBUTES]
    assert links and all(v.startswith(("data:", "#")) for _, _, v in links), [x[:2] + (x[2][:40],) for x in links
                                                                              if not x[2].startswith(("data:", "#"))]
    assert not [tag for tag, _ in page.elements if tag in ("link", "script", "iframe", "object", "embed")]
    raw = (out / "report.html").read_text(encoding="utf-8")
    assert "url(" not in raw and "@import" not in raw  # no CSS fetches either


def test_report_header_states_what_was_evaluated(evaluated, trained_model, sample_dir):
    metrics, _, page = evaluated
    config = json.loads((trained_model / "config.json").read_text())
    words = page.words
    for fact in (str(trained_model), str(sample_dir / "MovieGenre.csv"), config["evaluated_on"],
                 f"{metrics['n_posters']} the model never saw", f"trained on {config['n_train']} posters",
                 f"{__version__} (model trained with {config['posterlens_version']})"):
        assert fact in words, fact
    assert all(b["name"] in words for b in config["backbones"])
    assert re.search(r"Date \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", words)


def test_report_sets_model_beside_baselines_with_readable_names(evaluated):
    metrics, _, page = evaluated
    genre = page.tables["metrics-1"]
    assert [c for c, _ in genre[0]][2:5] == ["Model", "Top-2 constant", "Training priors"]
    assert all("_" not in row[0][0] for row in genre[1:])
    name, direction, *cells = page.row("metrics-1", "Mean average precision (macro)")
    values = [metrics["genre"]["macro_map"], *(metrics["genre"]["baselines"][b]["macro_map"] for b in ("top2_constant", "priors"))]
    assert direction[0] == "↑ higher is better" and [c for c, _ in cells[:3]] == [f"{v:.3f}" for v in values]
    assert [cls == "best" for _, cls in cells[:3]] == [v == max(values) for v in values]
    assert page.row("metrics-1", "Hamming loss")[1][0] == "↓ lower is better"
    assert page.row("metrics-2", "Mean absolute error")[3][0] == f"{metrics['score']['baseline_mae']:.3f}"
    interval = metrics["score"]["interval"]
    trust = page.row("metrics-3", "Score interval (80%): share of true scores inside")
    assert trust[2][0] == f"{interval['coverage']:.3f}" and 0 < interval["coverage"] <= 1
    assert page.row("metrics-3", "Score interval: mean width")[2][0] == f"{interval['mean_width']:.3f}"
    assert "Random neighbours" in [c for c, _ in page.tables["metrics-4"][0]]


def test_metric_tables_show_the_cross_validation_spread():
    scores = {"micro_f1": 0.5, "hamming_loss": 0.1}
    metrics = {"genre": {**scores, "baselines": {"top2_constant": {"micro_f1": 0.3, "hamming_loss": 0.2},
                                                  "priors": {"micro_f1": 0.1, "hamming_loss": 0.1}}}}
    validation = {"method": "5-fold cross-validation", "genre": {"micro_f1": {"mean": 0.45, "std": 0.031},
                                                                "hamming_loss": {"mean": 0.12, "std": 0.004}}}
    [table] = report.metric_tables(metrics, validation)
    assert table.validation == "At training: 5-fold cross-validation"
    assert [(r.name, r.validation, r.best) for r in table.rows] == [
        ("Micro F1", "0.450 ± 0.031", [True, False, False]), ("Hamming loss", "0.120 ± 0.004", [True, False, True])]
    html = report.render(report.Page(report.Header("m", ["b"], "c.csv", 1, 2, 3, "holdout", "0.1.0"), metrics, [table],
                                     pd.DataFrame(columns=["genre", "support", "prevalence", "ap", "precision", "recall",
                                                           "f1", "threshold"]),
                                     pd.DataFrame(columns=["true_genre", "predicted_instead", "count"]),
                                     {}, [], [], [], [], []))
    assert "0.450 ± 0.031" in html and "At training: 5-fold cross-validation" in html


def test_best_of_respects_the_direction_and_missing_values():
    assert report.best_of([0.5, 0.7, math.nan], report.HIGHER) == [False, True, False]
    assert report.best_of([0.5, None, 0.5], report.LOWER) == [True, False, True]
    assert report.best_of([1.0, 2.0], report.NEUTRAL) == [False, False]


def test_report_gives_per_genre_ap_prevalence_and_support(evaluated):
    metrics, out, page = evaluated
    per_genre = pd.read_csv(out / "per_genre.csv", keep_default_na=False, na_values=[""])
    rows = {r[0][0]: [c for c, _ in r[1:]] for r in page.tables["per-genre-table"][1:]}
    assert set(rows) == set(per_genre["genre"])
    for g in per_genre.itertuples():
        support, prevalence, ap = rows[g.genre][:3]
        assert support == str(g.support) and prevalence == f"{g.support / metrics['n_posters']:.3f}"
        assert ap == (f"{g.ap:.3f}" if not math.isnan(g.ap) else "–")
    assert any("Precision-recall curves" in a["alt"] for a in page.images("image/png"))


def test_report_embeds_figures_written_next_to_it(evaluated):
    _, out, page = evaluated
    embedded = {a["src"].split(",", 1)[1] for a in page.images("image/png")}
    for name in ("pr_curves", "scores", "reliability", "per_genre", "genre_distribution", "training_curves"):
        assert base64.b64encode((out / f"{name}.png").read_bytes()).decode() in embedded, name
    assert (out / "sample_posters.png").stat().st_size > 0 and (out / "per_genre.csv").stat().st_size > 0


def test_report_embeds_posters_and_similar_training_posters(evaluated, trained_model):
    _, _, page = evaluated
    posters = page.images("image/jpeg")
    with Image.open(io.BytesIO(base64.b64decode(posters[0]["src"].split(",", 1)[1]))) as image:
        assert image.format == "JPEG" and image.size == report.THUMBNAIL
    samples = page.tables["samples-table"][1:]
    assert len(samples) == 12 and all(row[2][0] and row[3][0] for row in samples)  # genres and probabilities
    chips = {a.get("class") for tag, a in page.elements if tag == "span"}
    assert {"chip hit", "chip extra", "chip missed", "chip shared"} <= chips  # predictions marked against the truth
    shown = {a["alt"].removeprefix("poster of ") for a in posters}
    training = set(pd.read_csv(trained_model / "similar_movies.csv", dtype=str)["title"])
    assert shown & training  # neighbours found in the catalogue's images folder
    assert "Largest score errors" in page.words and "Most genre mistakes" in page.words


def test_poster_grid_captions_wrap_instead_of_cutting(sample_dir):
    long_genres = "Action|Adventure|Animation|Biography|Comedy|Documentary"
    rows = pd.DataFrame([{"path": str(next((sample_dir / "images").glob("*.jpg"))),
                          "title": "A Very Long Title That Goes On: The Sequel To The Sequel (2004)",
                          "true": long_genres, "predicted": long_genres, "score": 7.0, "predicted_score": 6.5}])
    caption = report.plot_poster_grid(rows).axes[0].get_title()
    assert max(len(line) for line in caption.split("\n")) <= report.CAPTION_WIDTH
    flat = "".join(caption.split())
    assert "".join(rows["title"][0].split()) in flat and f"true:{long_genres}" in flat and f"pred:{long_genres}" in flat


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium) to render the report")
def test_report_renders_alone_in_chromium(evaluated):
    _, out, _ = evaluated
    with tempfile.TemporaryDirectory() as alone, tempfile.TemporaryDirectory() as profile:
        page = Path(alone) / "report.html"
        shutil.copyfile(out / "report.html", page)  # no figure or poster file beside it
        shot = Path(alone) / "shot.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri()],
                       check=True, capture_output=True, timeout=180)
        with Image.open(shot) as image:
            assert image.size == (1280, 4000)
            pixels = np.asarray(image.convert("HSV"))
    assert pixels[..., 2].std() > 20  # not a blank page
    assert (pixels[..., 1] > 100).mean() > 0.01  # colour: posters and figures drawn from the embedded images
