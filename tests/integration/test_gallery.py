"""`ikelab gallery` with two exhibits, as a class would get it: the failure on purpose and the
agent mending it, each a kept run with its page, and an index that links both."""

import re

import pytest

from lab.show.page import resources

from .helpers import ikelab

pytestmark = pytest.mark.root


def test_a_two_exhibit_gallery_runs_each_and_links_its_page_from_the_index(tmp_path):
    gallery = tmp_path / "gallery"
    result = ikelab("gallery", str(gallery), "--only", "split-without-agent,agent-table",
                    timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-2000:])
    # progress: the exhibit, its run's steps, and how many are left
    assert "[1/2 split-without-agent, 1 left] ikelab run --hash split --no-agent" in result.stdout
    assert re.search(r"\[2/2 agent-table, 0 left\] .*tunnels up", result.stdout)
    index = gallery / "index.html"
    text = index.read_text()
    assert text.count("<tr class='yes'>") == 2 and "NOT as it should" not in text
    for name in ("split-without-agent", "agent-table"):
        page = gallery / name / "report.html"
        assert f"href='{name}/report.html'" in text and page.exists()
        assert all(ref.startswith("data:") or (page.parent / ref).is_file()
                   for ref in resources(page))
    assert "something failed" in (gallery / "split-without-agent" / "report.html").read_text()


def test_a_gallery_asked_of_an_unknown_exhibit_or_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    for args in (["--only", "no-such-exhibit", str(tmp_path / "g")], [str(tmp_path / "file")]):
        result = ikelab("gallery", *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
