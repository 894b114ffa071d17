"""What the agent asks of its own charon over vici, in threads of their own: its IKE and CHILD
SA events, the prefixes of the CHILD SAs it has installed, and ending the IKE SAs the table
gave to someone else. The loop hears of each through `post(event)`.

charon restarts and goes away (a member failed on purpose): a vici error means "try again
later". Anything else is a bug: it is logged with its traceback and counted (`errors` in the
agent's status), never swallowed.
"""

import socket
import threading
import time
import traceback
from contextlib import contextmanager

import vici
import vici.exception

from .events import CharonSaid, HoldingsRead, StaleSasEnded

VICI_ERRORS = (OSError, vici.exception.SessionException, vici.exception.CommandException,
               vici.exception.DeserializationException, vici.exception.EventUnknownException)
EVENTS = ("ike-updown", "ike-rekey", "child-updown", "child-rekey")
RETRY = 0.5
HOLDINGS_SETTLE = 0.05  # events come in bursts while tunnels come up: one read per burst


def decode(value):
    """vici messages carry bytes; the same structure with str."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


@contextmanager
def session(path: str, timeout: float = 10.0):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        yield vici.Session(sock)
    finally:
        sock.close()


def list_sas(path: str) -> list[dict]:
    """Every IKE SA charon holds, with its CHILD SAs."""
    with session(path) as sess:
        return [sa for entry in sess.list_sas() for sa in decode(dict(entry)).values()]


class Charon:
    """The agent's side of its charon: `start()` the threads, `stop()` them."""

    def __init__(self, vici_socket: str, post, errors, log=print):
        self.path = vici_socket
        self.post = post  # hands an event to the agent's loop (any thread)
        self.errors = errors  # counts what should not happen
        self.log = log
        self.stopping = threading.Event()
        self.holdings_stale = threading.Event()

    def start(self, read_holdings: bool) -> None:
        threading.Thread(target=self._guarded, args=(self._listen,), name="charon-events",
                         daemon=True).start()
        if read_holdings:
            threading.Thread(target=self._guarded, args=(self._read_holdings,),
                             name="charon-holdings", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _guarded(self, work) -> None:
        """Run `work` until we stop; vici errors mean charon is away, anything else is a bug."""
        while not self.stopping.is_set():
            try:
                work()
            except VICI_ERRORS:
                pass  # charon restarting or gone: try again while we run
            except Exception:  # noqa: BLE001 - a bug: seen and counted, then retried
                self.errors.add()
                self.log(f"bug in {threading.current_thread().name}:\n{traceback.format_exc()}")
            self.stopping.wait(RETRY)

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
            for name, message in vici.Session(sock).listen(list(EVENTS)):
                name = decode(name)
                self.post(CharonSaid(name, decode(dict(message))))
                if name.startswith(("child", "ike-updown")):
                    self.holdings_stale.set()
                if self.stopping.is_set():
                    return
        finally:
            sock.close()

    def _read_holdings(self) -> None:
        """After CHILD SA events, the prefixes we now hold outbound SAs for: one read of
        charon's SAs answers a burst of events, so the loop is not starved decoding vici."""
        while not self.stopping.is_set():
            if not self.holdings_stale.wait(0.5):
                continue
            time.sleep(HOLDINGS_SETTLE)
            self.holdings_stale.clear()
            installed = frozenset(
                (bytes.fromhex(sa.get("initiator-spi", "")), ts)
                for sa in list_sas(self.path)
                for child in sa.get("child-sas", {}).values()
                if child.get("state") == "INSTALLED" for ts in child.get("remote-ts", []))
            self.post(HoldingsRead(frozenset(ts for _spi, ts in installed), installed))

    def initiate(self, connection: str, child: str, load: dict | None = None) -> None:
        """In a thread: have charon initiate `connection` and its CHILD SA `child`, without
        waiting for the outcome (its events tell); `load`: a vici `load-conn` message to load
        first (a crowd site's connection)."""
        self._in_thread(f"initiating {connection}", self._initiate, connection, child, load)

    def _initiate(self, connection: str, child: str, load: dict | None) -> None:
        with session(self.path) as sess:
            if load is not None:
                sess.load_conn(load)
            for _ in sess.initiate({"ike": connection, "child": child, "timeout": -1}):
                pass

    def end_sa(self, ispi: bytes) -> None:
        """In a thread: have charon end (with a DELETE to the peer) the IKE SA with this
        initiator SPI, if it still holds one."""
        self._in_thread(f"ending the SA {ispi.hex()}", self._end_sa, ispi)

    def _end_sa(self, ispi: bytes) -> None:
        for sa in list_sas(self.path):
            if sa.get("initiator-spi") == ispi.hex():
                with session(self.path) as sess:
                    for _ in sess.terminate({"ike-id": str(sa["uniqueid"]), "timeout": -1}):
                        pass

    def _in_thread(self, what: str, work, *args) -> None:
        def run():
            try:
                work(*args)
            except VICI_ERRORS as exc:
                self.log(f"{what}: {exc}")
            except Exception:  # noqa: BLE001 - a bug: seen and counted
                self.errors.add()
                self.log(f"bug {what}:\n{traceback.format_exc()}")
        threading.Thread(target=run, name="charon-request", daemon=True).start()

    def end_stale_sas(self, keep: frozenset, attempt: int) -> None:
        """In a thread: end every IKE SA charon holds that is not ours to keep, look again (up
        to three times), and post how it went."""
        threading.Thread(target=self._end_stale_sas, args=(keep, attempt),
                         name="charon-stale", daemon=True).start()

    def _end_stale_sas(self, keep: frozenset, attempt: int) -> None:
        dropped, left, held, up = 0, 0, frozenset(), {}
        try:
            for _ in range(3):
                sas = list_sas(self.path)
                held = frozenset(spi for sa in sas
                                 if (spi := bytes.fromhex(sa.get("initiator-spi", ""))) in keep)
                up = {bytes.fromhex(sa["initiator-spi"]): _seconds(sa.get("established"))
                      for sa in sas if sa.get("state") == "ESTABLISHED"
                      and bytes.fromhex(sa.get("initiator-spi", "")) in held}
                stale = [sa for sa in sas
                         if bytes.fromhex(sa.get("initiator-spi", "")) not in keep]
                left = len(stale)
                if not stale:
                    break
                for sa in stale:
                    try:
                        with session(self.path) as sess:
                            for _ in sess.terminate({"ike-id": str(sa["uniqueid"]),
                                                     "force": "yes", "timeout": -1}):
                                pass
                        dropped += 1
                    except VICI_ERRORS as exc:  # gone meanwhile, or charon busy: look again
                        self.log(f"ending stale SA {sa.get('uniqueid')}: {exc}")
        except VICI_ERRORS as exc:  # charon gone: nothing of it to serve with anyway
            self.log(f"reading charon's SAs: {exc}")
            left = 0
        except Exception:  # noqa: BLE001 - a bug: seen and counted; the join is tried again
            self.errors.add()
            self.log(f"bug ending stale SAs:\n{traceback.format_exc()}")
            left = -1
        self.post(StaleSasEnded(attempt, dropped, left, held, up))


def _seconds(value) -> float:
    """vici's "established" (seconds, as text); 0 when charon did not say."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
