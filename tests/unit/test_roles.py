"""The roles' written contract (lab/agent/protocol/contract.py), read from their code: a role
touches only its own methods, its own state (`OWNS`) and what its view (`VIEW`) names; it
writes only its own state (and the shared tallies); no view names another role's state; the
core provides every view."""

import ast
import inspect
from typing import Protocol

from lab.agent.protocol import contract
from lab.agent.protocol.core import Agent

from .agents import config

ROLES = [base for base in Agent.__mro__[1:] if base.__name__.endswith("Role")]
SHARED_TALLIES = {"counters"}


def view_names(view: type) -> set[str]:
    """Everything a view declares, its bases' included (Protocol's own machinery aside)."""
    names = set()
    for cls in view.__mro__:
        if cls in (object, Protocol) or contract.Core not in cls.__mro__:
            continue
        names |= set(getattr(cls, "__annotations__", {}))
        names |= {n for n in vars(cls) if not n.startswith("_")}
    return names


def uses(source: str) -> tuple[set[str], set[str]]:
    """(every `self.<name>` the code reads or writes, the names it writes: assigned,
    item-assigned, deleted or augmented)."""
    tree = ast.parse(source)
    used, written = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            used.add(node.attr)
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                written.add(node.attr)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            target = node.value
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                    and target.value.id == "self":
                written.add(target.attr)
    return used, written


def own_methods(role: type) -> set[str]:
    return {n for n, v in vars(role).items() if callable(v) or isinstance(v, property)}


def test_every_role_states_its_contract():
    assert len(ROLES) == 7
    for role in ROLES:
        assert isinstance(role.OWNS, tuple), role.__name__
        assert contract.Core in role.VIEW.__mro__, role.__name__


def beyond_contract(role: type, source: str) -> tuple[set[str], set[str]]:
    """(what `source`, as `role`'s code, reads outside its contract, what it writes outside
    its own state and the tallies)."""
    used, written = uses(source)
    allowed = own_methods(role) | set(role.OWNS) | view_names(role.VIEW) | {"OWNS", "VIEW"}
    return used - allowed, written - set(role.OWNS) - SHARED_TALLIES


def test_a_role_touches_only_its_own_methods_its_own_state_and_its_view():
    for role in ROLES:
        outside, _ = beyond_contract(role, inspect.getsource(role))
        assert not outside, f"{role.__name__} uses {sorted(outside)} outside its contract " \
                            f"(contract.{role.VIEW.__name__})"


def test_a_role_writes_only_its_own_state_and_the_tallies():
    for role in ROLES:
        _, outside = beyond_contract(role, inspect.getsource(role))
        assert not outside, f"{role.__name__} writes {sorted(outside)}"


def test_no_two_roles_own_the_same_state_and_no_view_names_another_roles_state():
    owner = {}
    for role in ROLES:
        for name in role.OWNS:
            assert name not in owner, f"{name} is owned by {owner[name]} and {role.__name__}"
            owner[name] = role.__name__
    for role in ROLES:
        others = {n for n in view_names(role.VIEW) if owner.get(n, role.__name__) !=
                  role.__name__}
        assert not others, f"contract.{role.VIEW.__name__} names {others}, another role's state"


def test_the_core_writes_no_roles_state_outside_the_roles_own_code():
    owned = {name for role in ROLES for name in role.OWNS}
    _, written = uses(inspect.getsource(Agent))
    assert not written & owned, f"core.Agent writes {sorted(written & owned)}"


def test_the_core_provides_every_view():
    agent = Agent(config(1), 0.0, first_seq=1)
    for role in ROLES:
        missing = {n for n in view_names(role.VIEW) if not hasattr(agent, n)}
        assert not missing, f"core.Agent lacks {missing} of contract.{role.VIEW.__name__}"
        assert set(role.OWNS) <= set(vars(agent)), role.__name__


def test_the_contract_test_sees_the_reaches_it_was_written_against():
    """Planted, as the code once was: liveness clearing the joining role's snapshot, and
    sa_events popping handover's ending SAs."""
    roles = {role.__name__: role for role in ROLES}
    liveness = "def on_state(self):\n    self.snapshot = None\n"
    assert beyond_contract(roles["LivenessRole"], liveness) == ({"snapshot"}, {"snapshot"})
    sa_events = "def on_charon(self, spi):\n    self.ending.pop(spi, None)\n"
    assert beyond_contract(roles["SaEventsRole"], sa_events) == ({"ending"}, set())
    counting = "def f(self):\n    self.counters['x'] += 1\n    self.claims[1] = 2\n"
    assert beyond_contract(roles["ClaimantRole"], counting) == (set(), set())
