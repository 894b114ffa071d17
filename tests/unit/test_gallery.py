"""The gallery's exhibits and index (lab.run.gallery), without root."""

import pytest

from lab.run.gallery import EXHIBITS, GalleryError, chosen, prepare, write_index


def test_the_exhibits_are_named_once_each_and_the_first_fails_on_purpose():
    names = [e.name for e in EXHIBITS]
    assert len(names) == len(set(names))
    assert EXHIBITS[0].ok is False and all(e.ok for e in EXHIBITS[1:])
    # each keeps its run, so its page is written
    assert all({"--capture", "--keep"} & set(e.options) for e in EXHIBITS)


def test_only_picks_exhibits_in_gallery_order_and_names_a_wrong_one():
    assert [e.name for e in chosen("nat,agent-table")] == ["agent-table", "nat"]
    assert chosen(None) == list(EXHIBITS)
    with pytest.raises(GalleryError, match="no exhibit 'nope'.*agent-table"):
        chosen("agent-table,nope")


def test_a_file_in_the_way_is_an_error_and_a_missing_directory_is_made(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(GalleryError, match="not a directory"):
        prepare(tmp_path / "f")
    assert prepare(tmp_path / "a" / "b").is_dir()


def test_the_index_says_which_exhibits_ended_as_they_should(tmp_path):
    rows = [{"name": "split-without-agent", "shows": "the <failure>", "options": "--no-agent",
             "expected_ok": False, "ok": False, "seconds": 12.3,
             "page": "split-without-agent/report.html"},
            {"name": "agent-table", "shows": "mended", "options": "--hash split",
             "expected_ok": True, "ok": False, "seconds": 20.0, "page": None}]
    text = write_index(tmp_path, rows).read_text()
    assert "<tr class='yes'>" in text and "<tr class='no'>" in text
    assert "href='split-without-agent/report.html'" in text and "the &lt;failure&gt;" in text
    assert text.count("NOT as it should") == 1
