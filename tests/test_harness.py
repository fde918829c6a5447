"""The benchmarks' harness: two sweeps writing one results file keep each other's cells, the
markdown table always matches the JSON, and every cell (or row) records the run that made it."""

from __future__ import annotations

import json

from tools.harness import RUN_KEY, ResultsFile, write_results

FIRST_RUN, SECOND_RUN = {"commit": "aaaaaaa"}, {"commit": "bbbbbbb"}


def test_two_writers_keep_each_others_cells(tmp_path):
    def summarize(results):
        return "cells: " + ", ".join(sorted(results["cells"]))

    first = ResultsFile(tmp_path / "r", summarize, FIRST_RUN, rows=True)
    second = ResultsFile(tmp_path / "r", summarize, SECOND_RUN, rows=True)
    a, b = first.load(), second.load()  # both start before either saved
    a["cells"]["auto/100/0"] = {"auto": {"top1": 80.0}}
    first.save(a)
    b["cells"]["streams/500/0"] = {"rule": {"top1": 70.0}}
    b["cells"]["auto/100/0"] = {"auto": {"top1": 99.0}}  # mine win, the file's rows join
    second.save(b)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["cells"] == {"auto/100/0": {"auto": {"top1": 99.0, RUN_KEY: SECOND_RUN}},
                              "streams/500/0": {"rule": {"top1": 70.0, RUN_KEY: SECOND_RUN}}}
    a["cells"]["streams/500/0"] = {"practise": {"top1": 1.0}}  # another row of the same cell
    first.save(a)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["cells"]["streams/500/0"] == {"practise": {"top1": 1.0, RUN_KEY: FIRST_RUN},
                                               "rule": {"top1": 70.0, RUN_KEY: SECOND_RUN}}
    assert (tmp_path / "r.md").read_text() == "cells: auto/100/0, streams/500/0\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".r.json.lock", "r.json", "r.md"]


def test_only_what_this_run_measured_is_stamped(tmp_path):
    """Cells saved before runs were recorded keep no record; a resumed run stamps only the
    cells it adds."""
    (tmp_path / "r.json").write_text(json.dumps({"cells": {"old": {"top1": 50.0}}}))
    file = ResultsFile(tmp_path / "r", lambda results: "", FIRST_RUN)
    results = file.load()
    results["cells"]["new"] = {"top1": 60.0}
    file.save(results)
    saved = json.loads((tmp_path / "r.json").read_text())["cells"]
    assert saved == {"old": {"top1": 50.0}, "new": {"top1": 60.0, RUN_KEY: FIRST_RUN}}


def test_results_written_whole_carry_the_run_on_top(tmp_path):
    write_results(tmp_path / "sub" / "r", {"rows": [1, 2]}, "# table", FIRST_RUN)
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {**FIRST_RUN, "rows": [1, 2]}
    assert (tmp_path / "sub" / "r.md").read_text() == "# table\n"
