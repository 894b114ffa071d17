"""The house rules, read from the code itself, folder by folder: the agent's protocol does no
I/O, the agent imports nothing from the lab, the lab imports from the agent only through its
narrow door, no floor imports a floor above it, and no module grows past what a reader can
hold."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "lab"
AGENT = LAB / "agent"
PROTOCOL = AGENT / "protocol"
SIM = LAB / "sim"
# What a pure folder may not import: the clock, the file system's processes, the network.
IO_MODULES = {"os", "time", "socket", "select", "selectors", "subprocess", "threading",
              "netfilterqueue"}
# vicilink: the one vici client; ike: the one packet codec (the flood builds with it)
DOOR = {"names", "config", "io.control", "io.trace", "io.vicilink", "protocol.steering",
        "protocol.ike"}
# The lab's floors, bottom up: a module imports from its own floor and the floors below.
# `top` is lab/*.py (the command line); the simulator stands beside the agent, on it alone.
FLOORS = ("agent", "plan", "show", "net", "strongswan", "run", "top")
MAX_LINES = 600


def imports(path: Path) -> set[str]:
    """Absolute module names imported by `path` (relative imports resolved within lab)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = ".".join(parts[:-1] if parts[-1] != "__init__" else parts[:-1])
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


def module_of(name: str) -> str:
    """The module a dotted name lives in: `lab.agent.names.Ownership` is in `lab.agent.names`."""
    parts = name.split(".")
    while parts and not (ROOT.joinpath(*parts).with_suffix(".py").exists()
                         or ROOT.joinpath(*parts).is_dir()):
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> str:
    """The floor of a module `lab.<floor>.…` (a module lab/<name>.py is on the top floor)."""
    parts = module_of(module).split(".")
    return parts[1] if len(parts) > 1 and (LAB / parts[1]).is_dir() else "top"


def test_nothing_under_the_agents_protocol_does_io():
    paths = sorted(PROTOCOL.rglob("*.py"))
    assert len(paths) > 15  # the folder is where the core and its roles live
    for path in paths + [AGENT / "names.py"]:
        used = {m.split(".")[0] for m in imports(path)}
        assert not used & IO_MODULES, f"{path.relative_to(ROOT)} imports {used & IO_MODULES}"


def test_the_agents_protocol_imports_nothing_of_its_io_shell():
    for path in PROTOCOL.rglob("*.py"):
        shell = {m for m in imports(path) if m.startswith("lab.agent.io")}
        assert not shell, f"{path.relative_to(ROOT)} imports {shell}"


def test_the_agent_imports_nothing_from_the_rest_of_the_lab():
    for path in AGENT.rglob("*.py"):
        outside = {m for m in imports(path) if m.startswith("lab.") and not m.startswith(
            "lab.agent")}
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


def test_the_lab_uses_only_the_agents_narrow_door():
    outside = [p for p in LAB.rglob("*.py") if not p.is_relative_to(AGENT)]
    for path in outside + list((ROOT / "scripts").glob("*.py")):
        if path.is_relative_to(SIM):
            continue  # the simulator runs the real core: its own test below
        used = {".".join(module_of(m).split(".")[2:]) for m in imports(path)
                if m.startswith("lab.agent.")}
        used.discard("io")  # `from ..agent.io import control` names the package and the module
        used.discard("protocol")
        assert used <= DOOR, f"{path.relative_to(ROOT)} imports lab.agent.{used - DOOR}"


def test_no_floor_imports_a_floor_above_it():
    checked = set()
    for path in LAB.rglob("*.py"):
        if path.is_relative_to(SIM):
            continue
        me = floor_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert me in FLOORS, f"{path.relative_to(ROOT)} is on no floor: add it to FLOORS"
        checked.add(me)
        for module in imports(path):
            if module.startswith("lab.") and not module.startswith("lab.sim"):
                theirs = floor_of(module)
                assert FLOORS.index(theirs) <= FLOORS.index(me), \
                    f"{path.relative_to(ROOT)} ({me}) imports {module} ({theirs}), a floor above"
    assert checked == set(FLOORS)


def test_the_simulator_drives_the_agents_core_and_nothing_else_of_the_lab():
    """It runs the real core and pure logic only: no socket, no subprocess, no thread (its
    runner forks processes for speed, `multiprocessing`), and nothing of the lab beyond the
    agent's protocol."""
    for path in SIM.glob("*.py"):
        used = imports(path)
        outside = {m for m in used if m.startswith("lab.") and not m.startswith(
            ("lab.agent", "lab.sim"))}
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"
        io = {m.split(".")[0] for m in used} & (IO_MODULES - {"time"})
        shells = {m for m in used if m.startswith("lab.agent.io")}
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


# IKE's two ports (names.IKE_PORT, names.NATT_PORT), as numbers or as the strings a command
# line takes.
PORTS = (500, 4500, "500", "4500")


def test_ike_ports_are_numbered_only_in_names():
    found = []
    for path in sorted(LAB.rglob("*.py")):
        if path == AGENT / "names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Constant) and not isinstance(node.value, bool)
                    and node.value in PORTS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_the_readmes_drawing_of_the_floors_names_every_module():
    """The README's layout drawing lists each folder's modules beside it; a module added to a
    folder and not drawn there fails here."""
    readme = (ROOT / "README.md").read_text()
    drawing = readme.split("## Layout", 1)[1].split("```", 2)[1]
    drawn: dict[Path, set[str]] = {}
    folder = None
    for line in drawing.splitlines():
        for word in line.split():
            if word.startswith("lab/") and word.endswith("/"):
                folder = ROOT / word.rstrip("/")
            elif word in ("io/", "protocol/"):
                folder = AGENT / word.rstrip("/")
            elif word.endswith(".py") and word.startswith("lab/"):
                drawn.setdefault(LAB, set()).add(Path(word).stem)
            elif folder is not None:
                drawn.setdefault(folder, set()).add(word)
    folders = [LAB] + [p for p in LAB.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    for where in folders:
        modules = {p.stem for p in where.glob("*.py") if p.stem != "__main__"}
        modules.discard("__init__")
        missing = modules - drawn.get(where, set())
        assert not missing, f"README's layout drawing lacks {missing} in {where.relative_to(ROOT)}"
