"""What the agent asks of its own charon over vici, in threads of their own: its IKE and CHILD
SA events, the prefixes of the CHILD SAs it has installed, and ending the IKE SAs the table
gave to someone else. The loop hears of each through `post(event)`.

charon restarts and goes away (a member failed on purpose): a vici error means "try again
later". Anything else is a bug: it is logged with its traceback and counted (`errors` in the
agent's status), never swallowed.
"""

import threading
import time
import traceback

from ..protocol.events import CharonSaid, HoldingsRead, StaleSasEnded
from ..protocol.holdings import Holdings
from .vicilink import VICI_ERRORS, decode, session

EVENTS = ("ike-updown", "ike-rekey", "child-updown", "child-rekey")
RETRY = 0.5
HOLDINGS_SETTLE = 0.05  # events come in bursts while tunnels come up: one post per burst
HOLDINGS_REFRESH = 30.0  # seconds between full reads of charon's CHILD SAs (a missed event)


def list_sas(path: str) -> list[dict]:
    """Every IKE SA charon holds, with its CHILD SAs."""
    with session(path) as sess:
        return [sa for entry in sess.list_sas() for sa in decode(dict(entry)).values()]


class CharonListener:
    """The agent's side of its charon (not `lab.net.daemons.Charon`, the lab's handle on the
    process): `start()` the threads, `stop()` them."""

    def __init__(self, vici_socket: str, post, errors, log=print):
        self.path = vici_socket
        self.post = post  # hands an event to the agent's loop (any thread)
        self.errors = errors  # counts what should not happen
        self.log = log
        self.stopping = threading.Event()

    def start(self, read_holdings: bool) -> None:
        """Follow charon's events; with `read_holdings`, also keep what CHILD SAs it has
        installed and post them (HoldingsRead) after each burst of events."""
        self.read_holdings = read_holdings
        threading.Thread(target=self._guarded, args=(self._listen,), name="charon-events",
                         daemon=True).start()

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
        """Hand every event to the loop; keep the holdings from the same stream, starting
        from a full read once listening (so no event falls between the read and the events)
        and reading all again every HOLDINGS_REFRESH seconds."""
        holdings, dirty_since, refreshed = Holdings(), None, 0.0
        with session(self.path, timeout=None) as sess:
            for name, message in sess.listen(list(EVENTS), timeout=0.05):
                if self.stopping.is_set():
                    return
                now = time.monotonic()
                if name is not None:
                    name, message = decode(name), decode(dict(message))
                    self.post(CharonSaid(name, message))
                    if holdings.apply(name, message) and self.read_holdings:
                        holdings.reset(list_sas(self.path))  # what the events cannot say
                    dirty_since = dirty_since or now
                if self.read_holdings and now >= refreshed + HOLDINGS_REFRESH:
                    # Registered for events by now: those that come during the read wait
                    # in the socket and are applied after it, in order.
                    holdings.reset(list_sas(self.path))
                    refreshed, dirty_since = now, now
                if (self.read_holdings and dirty_since is not None
                        and (name is None or now >= dirty_since + HOLDINGS_SETTLE)):
                    installed = holdings.installed()
                    self.post(HoldingsRead(frozenset(ts for _spi, ts in installed), installed))
                    dirty_since = None

    def initiate(self, connection: str, child: str, load: dict | None = None) -> None:
        """In a thread: have charon initiate `connection` and its CHILD SAs (every one it has
        loaded; `child` if it lists none), without waiting for the outcome (its events
        tell); `load`: a vici `load-conn` message to load first (a crowd site's
        connection)."""
        self._in_thread(f"initiating {connection}", self._initiate, connection, child, load)

    def _initiate(self, connection: str, child: str, load: dict | None) -> None:
        with session(self.path) as sess:
            if load is not None:
                sess.load_conn(load)
            # IKEv1 with both IP versions has a CHILD SA per version: both come back.
            children = [name for conn in sess.list_conns({"ike": connection})
                        for name in conn.get(connection, {}).get("children", {})]
            for name in children or [child]:
                for _ in sess.initiate({"ike": connection, "child": name, "timeout": -1}):
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
