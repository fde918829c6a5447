"""The benchmarks' resumable results file: two sweeps writing one file keep each other's
cells, and the markdown table always matches the JSON."""

from __future__ import annotations

import json

from tools.results_file import ResultsFile


def test_two_writers_keep_each_others_cells(tmp_path):
    def summarize(results):
        return "cells: " + ", ".join(sorted(results["cells"]))

    first, second = ResultsFile(tmp_path / "r", summarize), ResultsFile(tmp_path / "r", summarize)
    a, b = first.load(), second.load()  # both start before either saved
    a["cells"]["auto/100/0"] = {"top1": 80.0}
    first.save(a)
    b["cells"]["streams/500/0"] = {"top1": 70.0}
    b["cells"]["auto/100/0"] = {"top1": 99.0, "seconds": 5}  # mine win, the file's rows join
    second.save(b)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["cells"] == {"auto/100/0": {"top1": 99.0, "seconds": 5},
                              "streams/500/0": {"top1": 70.0}}
    a["cells"]["streams/500/0"] = {"practise": 1.0}  # another method's row of the same cell
    first.save(a)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["cells"]["streams/500/0"] == {"practise": 1.0, "top1": 70.0}
    assert (tmp_path / "r.md").read_text() == "cells: auto/100/0, streams/500/0\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".r.json.lock", "r.json", "r.md"]
