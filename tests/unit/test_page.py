"""A kept run's page (lab.show.page), without root: a run directory with a real agent's trace (the
ladder's traced cluster), a charon log and a plot becomes one self-contained report.html."""

import base64
import json
from html.parser import HTMLParser

from lab.agent.names import NodeFiles
from lab.show.page import AGENTS, PAGE, resources, write_page
from lab.show.report import lab_report
from lab.plan.topology import LabSpec, build_plan

from .test_ladder import split_hash_negotiation
from .test_report import good_tunnel

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.unclosed = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2", "h3", "table", "figure", "ul", "pre"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3", "table", "figure", "ul", "pre"):
            if not self.open or self.open.pop() != tag:
                self.unclosed += 1


def kept_run(tmp_path):
    plan = build_plan(LabSpec(members=3, peers=1, hash="split"))
    for member in ("m1", "m2", "m3"):
        NodeFiles(member, tmp_path).trace.write_text("".join(
            json.dumps(line) + "\n" for line in split_hash_negotiation().lines
            if line["member"] == member))
    NodeFiles("p1", tmp_path).log.write_text(
        "10:00:00.004 06[ENC] <cluster|1> generating IKE_AUTH request 1 [ IDi IDr AUTH SA TSi "
        "TSr ]\n")
    (tmp_path / "captures").mkdir()
    (tmp_path / "captures" / "external-m1.pcap").write_bytes(b"")
    (tmp_path / "chaos.png").write_bytes(PNG)
    (tmp_path / AGENTS).write_text(json.dumps({"m1": {"counters": {"forwarded": 0},
                                                      "table": [{"key": "ab/0/i",
                                                                 "owner": "m1"}]}}))
    report = lab_report(LabSpec(hash="split"), [good_tunnel()], {}, {"lab_up_s": 1.0},
                        str(tmp_path))
    return plan, report


def test_a_kept_runs_page_holds_its_pictures_report_agents_and_links(tmp_path):
    plan, report = kept_run(tmp_path)
    page = write_page(tmp_path, plan, report)
    assert page == tmp_path / PAGE
    text = page.read_text()
    for part in ("all is well", "<svg", "hashing switch", "IKE_AUTH request #1 [IDi IDr AUTH",
                 "ANNOUNCE", "sync network", "data:image/png;base64,", "m1's ownership table",
                 "ab/0/i", "captures/external-m1.pcap", "trace_m1.jsonl", "charon_p1.log"):
        assert part in text, part
    # self-contained: nothing fetched from elsewhere, every link resolves inside the run
    for ref in resources(page):
        assert "://" not in ref, ref
        assert ref.startswith("data:") or (tmp_path / ref).exists(), ref
    tags = Tags()
    tags.feed(text)
    assert tags.unclosed == 0 and tags.open == []


def test_a_page_without_traces_or_agents_says_so_and_still_stands(tmp_path):
    plan = build_plan(LabSpec(members=2, peers=1))
    report = lab_report(LabSpec(), [good_tunnel()], {}, {"lab_up_s": 1.0}, str(tmp_path))
    text = write_page(tmp_path, plan, report).read_text()
    assert "neither agent traces nor captures" in text and "ownership table" not in text
