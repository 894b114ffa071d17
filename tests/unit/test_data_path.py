"""`probes.data_path_complete` and `lans_steered`: when a tunnel's data path counts as complete,
from routing tables as the kernels print them (`ip -o route show table N`), no root needed."""

from types import SimpleNamespace

from lab.run import probes
from lab.plan.topology import LabSpec, build_plan


class Node:
    """A node whose kernel prints `tables` (table -> `ip -o route` lines)."""

    def __init__(self, tables: dict[int, list[str]]):
        self.tables = tables

    def cmd(self, command: str) -> str:
        table = int(command.split("table ")[1].split()[0])
        return "\n".join(self.tables.get(table, []))


def lab_with(buckets: list[str], steering: bool = True):
    plan = build_plan(LabSpec(members=2, peers=1))
    m1, m2 = plan.members
    peer = plan.peers[0]
    lan = str(peer.lans[0])
    nodes = {
        m1.name: Node({probes.TUNNEL_TABLE: [f"{lan} dev ipsec0 proto static src 10.1.0.2"]}),
        m2.name: Node({probes.STEERING_TABLE:
                       [f"{lan} via {m1.sync_address} dev m2-eth2"] if steering else []}),
        peer.name: Node({probes.TUNNEL_TABLE: [f"{plan.cluster_lans[0]} dev ipsec0"]}),
    }
    switch = SimpleNamespace(buckets=buckets)
    return SimpleNamespace(plan=plan, node=nodes.__getitem__, switch=lambda role: switch), peer


def test_a_tunnel_is_complete_once_every_member_the_lan_switch_feeds_reaches_its_holder():
    lab, peer = lab_with(["m1", "m2"])
    assert probes.data_path_complete(lab, {peer.name}) == {peer.name}
    assert probes.lans_steered(lab, [str(peer.lans[0])]) == {str(peer.lans[0])}


def test_a_member_without_its_steering_route_leaves_the_path_incomplete():
    lab, peer = lab_with(["m1", "m2"], steering=False)
    assert probes.data_path_complete(lab, {peer.name}) == set()
    lab, peer = lab_with(["m1"], steering=False)  # m2 gets no LAN traffic: it needs no route
    assert probes.data_path_complete(lab, {peer.name}) == {peer.name}


def test_a_lan_switch_that_feeds_nobody_is_no_data_path():
    # The seed of a lost first ping: the LAN switch's buckets were empty for 0.2 s after the
    # lab counted itself up, and "every fed member steers" held for no member at all.
    lab, peer = lab_with([])
    assert probes.data_path_complete(lab, {peer.name}) == set()
    assert probes.lans_steered(lab, [str(peer.lans[0])]) == set()
