"""The witness's process: it runs in the sync bridge's namespace, on the bridge's own address,
answers every member's WITNESS_PING with the group it backs (`witness`: the decision is
there, pure), and logs each change of that group. Its control socket answers `status` with
the group and what each member last said it hears.

Run: python -m lab.agent.io.witnessd --config witness_<bridge>.json
"""

import argparse
import signal
import socket
import sys
import time

from ..config import WitnessConfig
from ..names import SYNC_PORT, member_name
from ..protocol import sync
from ..protocol.witness import Witness
from .control import ControlServer
from .daemon import run_ahead_of_the_data_plane


class WitnessDaemon:
    def __init__(self, config: WitnessConfig):
        self.config = config
        self.witness = Witness(list(config.members), config.dead_after, time.monotonic())
        self.codec = sync.Codec(bytes.fromhex(config.key), sync.WITNESS, time.time_ns())
        self.stopping = False
        self.dropped = 0  # datagrams that were not a member's ping
        self.pings = 0

    def log(self, text: str) -> None:
        now = time.time()
        print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} "
              f"witness: {text}", flush=True)

    def answer(self, data: bytes) -> bytes | None:
        """The answer to one datagram, or None for anything that is not a ping."""
        try:
            msg = self.codec.decode(data, time.time(), self.config.dead_after / 2)
            if msg.type != sync.WITNESS_PING:
                raise sync.SyncError("type")
            beat = sync.decode_heartbeat(msg.payload)
        except sync.SyncError:
            self.dropped += 1
            return None
        self.pings += 1
        before = self.witness.backed
        backed, group = self.witness.report(msg.sender, frozenset(beat.live), time.monotonic())
        if group != before:
            self.log("backs " + (", ".join(member_name(i) for i in sorted(group)) or "nobody"))
        return self.codec.encode(sync.Message(
            sync.WITNESS_ANSWER, sync.WITNESS, tag=msg.tag, owner=1 if backed else 0,
            payload=sync.encode_members(group).to_bytes(4, "big")), time.time())

    def status(self, _request: str) -> dict:
        now = time.monotonic()
        return {"backs": [member_name(i) for i in sorted(self.witness.backed)],
                "changes": self.witness.changes, "pings": self.pings, "dropped": self.dropped,
                "heard": {member_name(m): {"hears": sorted(member_name(i) for i in hears),
                                           "age_s": round(now - at, 3)}
                          for m, (at, hears) in sorted(self.witness.reports.items())}}

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.config.address, SYNC_PORT))
        sock.settimeout(0.2)
        control = ControlServer(self.config.control_socket, self.status)
        control.start()
        self.log(f"listening on {self.config.address}:{SYNC_PORT}")
        try:
            while not self.stopping:
                try:
                    data, source = sock.recvfrom(65536)
                except socket.timeout:
                    continue
                reply = self.answer(data)
                if reply is not None:
                    try:
                        sock.sendto(reply, source)
                    except OSError:
                        pass  # the member's link is down: its missing answer says so
        finally:
            control.close()
            sock.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="ikelab sync network witness")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        config = WitnessConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        print(f"witness: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    daemon = WitnessDaemon(config)
    daemon.log(run_ahead_of_the_data_plane())
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
