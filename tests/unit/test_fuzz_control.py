"""Fuzzing the agent's control socket: any local process may connect to it and say anything,
and the lab's switches and `ikelab status` depend on it answering. So whatever bytes a client
sends, the server answers with exactly one JSON line (`answer(request)` for a known request,
an error naming the unknown one otherwise), calls `answer` for known requests only, and goes
on serving the next client.

A real `ControlServer` on a Unix socket under a tmp path (no root needed), with an `answer`
of the test's own that echoes the request; clients are raw sockets, and `query` itself.
"""

import json
import socket

import pytest
from hypothesis import event, given, strategies as st

from lab.agent.io.control import REQUESTS, ControlServer, query


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """(socket path, the requests `answer` was called with), one server for every example:
    serving many clients in a row is part of what is checked."""
    asked = []

    def answer(request):
        asked.append(request)
        return {"answered": request}

    path = tmp_path_factory.mktemp("control") / "agent.sock"
    server = ControlServer(path, answer)
    server.start()
    yield path, asked
    server.close()


def exchange(path, data: bytes) -> bytes:
    """Send `data`, say we are done, and read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass  # the server closed with bytes of ours unread: its answer is already here
    return reply


def request_of(data: bytes) -> str:
    """What the server takes as the request: the first line, at most 256 bytes of it."""
    line = data[:256].split(b"\n", 1)[0]
    return line.strip().decode(errors="replace")


def check_reply(reply: dict, request: str, asked: list, before: int) -> None:
    if request in REQUESTS:
        event("known request")
        assert reply == {"answered": request} and asked[before:] == [request]
    else:
        event("unknown request")
        assert set(reply) == {"error"} and asked[before:] == []
        assert reply["error"].startswith(f"unknown request {request[:40]!r}")


noisy_requests = st.tuples(st.sampled_from(" \t\r\x0b\x0c"), st.sampled_from(REQUESTS),
                           st.sampled_from(["", " ", "\r", "\n", "\nstatus\n", "x"]),
                           st.binary(max_size=20)).map(
    lambda parts: (parts[0] + parts[1] + parts[2]).encode() + parts[3])


@given(st.one_of(st.binary(max_size=600), st.text(max_size=300).map(str.encode),
                 noisy_requests))
def test_any_bytes_from_a_client_get_exactly_one_json_line(agent, data):
    path, asked = agent
    before = len(asked)
    reply = exchange(path, data)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    check_reply(json.loads(reply), request_of(data), asked, before)
    assert query(path, "state") == {"answered": "state"}  # and the server serves on


@given(st.one_of(st.text(max_size=300), st.sampled_from(REQUESTS)))
def test_query_of_any_text_gets_the_answer_or_the_error_for_that_request(agent, text):
    path, asked = agent
    before = len(asked)
    check_reply(query(path, text), request_of(text.encode()), asked, before)


@given(st.binary(max_size=600))
def test_a_client_that_leaves_without_its_answer_costs_the_server_nothing(agent, data):
    path, _ = agent
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(data)
    assert query(path, "owners") == {"answered": "owners"}
