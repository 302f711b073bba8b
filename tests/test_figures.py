"""README's figures are the numbers `make figures` wrote: each table equals the JSON beside it in docs/figures,
and each picture there has the JSON of what it shows."""

import json
import os
import re

import pytest

from conftest import ROOT
from keras_dc import probe_plot

FIGURES = os.path.join(ROOT, "docs", "figures")


def _json(name):
    path = os.path.join(FIGURES, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run `make figures`")
    with open(path) as handle:
        return json.load(handle)


def _readme_table(header):
    """The rows (lists of cells, header first) of README's table whose header row holds `header`."""
    lines = open(os.path.join(ROOT, "README.md")).read().splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith("|") and header in line)
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("*") for cell in line.strip().strip("|").split("|")])
    return [rows[0]] + rows[2:]


def _numbers(cell):
    return [float(number) for number in re.findall(r"\d+\.\d+", cell)]


def test_readmes_nmi_table_is_the_demo_runs_clusterings():
    metrics = [json.loads(line) for line in open(os.path.join(FIGURES, "demo_metrics.jsonl"))]
    nmi_after = {row["epoch"] - 1: row["cluster_nmi_labels"] for row in metrics if "cluster_nmi_labels" in row}
    header, values = _readme_table("clustering after epoch")
    epochs = [int(re.match(r"\d+", cell).group()) for cell in header[1:]]
    assert [f"{nmi_after[epoch]:.3f}" for epoch in epochs] == values[1:]


def test_readmes_probe_table_is_the_probe_reports():
    trained, random = _json("demo_probe.json"), _json("random_probe.json")
    _, probes, knn, kmeans = _readme_table("| trained | random init |")

    def percent(report):
        return [round(100 * row["top1"], 1) for row in report["layers"].values()]

    assert [_numbers(probes[1]), _numbers(probes[2])] == [percent(trained), percent(random)]
    assert [_numbers(knn[1]), _numbers(knn[2])] == [[round(100 * report["knn"]["top1"], 1)]
                                                    for report in (trained, random)]
    assert [_numbers(kmeans[1]), _numbers(kmeans[2])] == [[round(report["clusters"]["kmeans"]["nmi"], 3)]
                                                          for report in (trained, random)]


def test_readmes_fine_tuning_table_is_the_fine_tuning_reports():
    rows = _readme_table("fine-tuning command")[1:]
    reports = [_json(f"finetune_{name}.json") for name in ("frozen", "full", "random")]
    assert [_numbers(row[1]) for row in rows] == [[round(100 * report["top1"], 1)] for report in reports]
    assert [_numbers(row[2]) for row in rows] == [[round(100 * report["history"]["top1"][-1], 1)]
                                                  for report in reports]


def test_the_probe_plot_shows_the_probe_reports():
    plotted = _json("demo_probes.json")["top1"]
    reports = [_json("demo_probe.json"), _json("random_probe.json")]
    assert [list(curve.values()) for curve in plotted.values()] == [
        [100 * row["top1"] for row in report["layers"].values()] for report in reports]


@pytest.mark.parametrize("figure, data", [("photos", "photos"), ("photos_colour", "photos"), ("shapes", "shapes")])
def test_evaluations_multi_seed_tables_are_the_probe_reports(figure, data):
    """docs/evaluation.md's photograph and shape tables are what plot_probes prints of the reports in
    docs/figures/DATA: each row the mean ± sd over the seeds of one network, in the plot's order."""
    numbers = _json(f"{figure}_probes.json")
    summaries = {label: probe_plot.summarize([os.path.join(ROOT, path) for path in paths])
                 for label, paths in numbers["reports"].items()}
    assert all(os.path.dirname(path) == f"docs/figures/{data}" for paths in numbers["reports"].values()
               for path in paths)
    table = probe_plot.markdown_table(summaries, {label: len(paths) for label, paths in numbers["reports"].items()})
    lines = open(os.path.join(ROOT, "docs", "evaluation.md")).read().splitlines()
    first_row = lines.index(table.splitlines()[2])
    assert lines[first_row - 2:first_row - 2 + len(table.splitlines())] == table.splitlines()


def test_every_picture_in_the_docs_is_made_with_its_numbers():
    documents = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", name)
                                                     for name in os.listdir(os.path.join(ROOT, "docs"))
                                                     if name.endswith(".md")]
    pictures = {os.path.normpath(os.path.join(os.path.dirname(document), link)) for document in documents
                for link in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", open(document).read())}
    assert len(pictures) >= 2
    for picture in pictures:
        assert os.path.dirname(picture) == FIGURES, picture
        assert os.path.exists(os.path.splitext(picture)[0] + ".json"), picture
