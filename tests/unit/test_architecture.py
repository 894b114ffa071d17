"""The house rules, read from the code itself: the agent's state machine does no I/O, the agent
imports nothing from the lab, the lab imports from the agent only through its narrow door, and
no module grows past what a reader can hold."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "lab"
AGENT = LAB / "agent"
# The agent's protocol and pure logic: what `core.Agent` is made of.
PURE = ("core", "claimant", "director", "joining", "handover", "liveness", "resync",
        "sa_events", "events", "ike", "ownership", "membership", "witness", "sync", "steering",
        "names", "config")
SIM = LAB / "sim"
IO_MODULES = {"socket", "select", "selectors", "subprocess", "threading", "netfilterqueue"}
# vicilink: the one vici client; ike: the one packet codec (the flood builds with it)
DOOR = {"names", "config", "control", "steering", "trace", "vicilink", "ike"}
MAX_LINES = 600


def imports(path: Path) -> set[str]:
    """Absolute module names imported by `path` (relative imports resolved within lab)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_the_agents_state_machine_does_no_io():
    for name in PURE:
        used = {m.split(".")[0] for m in imports(AGENT / f"{name}.py")}
        assert not used & IO_MODULES, f"lab/agent/{name}.py imports {used & IO_MODULES}"


def test_the_agent_imports_nothing_from_the_rest_of_the_lab():
    for path in AGENT.glob("*.py"):
        outside = {m for m in imports(path) if m.startswith("lab.") and not m.startswith(
            "lab.agent")}
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


def test_the_lab_uses_only_the_agents_narrow_door():
    for path in list(LAB.glob("*.py")) + list((ROOT / "scripts").glob("*.py")):
        used = {m.split(".")[2] for m in imports(path)
                if m.startswith("lab.agent.") and len(m.split(".")) > 2}
        assert used <= DOOR, f"{path.relative_to(ROOT)} imports lab.agent.{used - DOOR}"


def test_the_simulator_drives_the_agents_core_and_nothing_else_of_the_lab():
    """It runs the real core and pure logic only: no socket, no subprocess, no thread (its
    runner forks processes for speed, `multiprocessing`), and nothing of the lab beyond the
    agent."""
    for path in SIM.glob("*.py"):
        used = imports(path)
        outside = {m for m in used if m.startswith("lab.") and not m.startswith(
            ("lab.agent", "lab.sim"))}
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"
        io = {m.split(".")[0] for m in used} & (IO_MODULES | {"os"})
        shells = {m for m in used if m.startswith("lab.agent.") and m.split(".")[2] in (
            "daemon", "nfqueue", "charon", "routes", "control", "witnessd")}
        assert not (io - ({"os"} if path.stem == "runner" else set())) and not shells, \
            f"{path.relative_to(ROOT)} imports {io | shells}"


def test_no_module_of_the_lab_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in LAB.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


# Spelled once, in lab/agent/names.py (`MemberState`, `Ownership`); "table" alone is too
# common a word (nft tables, routing tables) to look for.
NAMED_ONCE = ("joining", "serving", "isolated", "draining", "drained", "table+label",
              "stateless")


def test_member_states_and_ownership_modes_are_spelled_only_in_names():
    found = []
    for path in sorted(LAB.rglob("*.py")):
        if path == AGENT / "names.py":
            continue
        tree = ast.parse(path.read_text())
        # A report's or a status's keys ("serving": the members that serve) are not states.
        keys = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}
        keys |= {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        keys |= {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "get"}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and node.value in NAMED_ONCE
                    and id(node) not in keys):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found

