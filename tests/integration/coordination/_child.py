"""Child processes for the coordination tests: `python -m tests.integration.coordination._child <verb> ...`.

- `race <url> <name> <holder>`: print "ready", wait for a line on stdin, try to claim, print
  "won <token>" or "lost".
- `hold <url> <name> <holder> <ttl_s>`: hold the lease with a Singleton, print "held <token>",
  then sleep until killed.
- `upgrade <url>`: print "ready", wait for a line on stdin, run the migrations, print the revision.
- `listen <url> <channel>`: print "ready", then every payload received, one a line.
"""

from __future__ import annotations

import sys
import threading

from fleet_server.coordination.bus import PgBus
from fleet_server.coordination.leases import LeaseStore, Singleton
from fleet_server.db import make_engine
from fleet_server.migrate import upgrade


def _say(line: str) -> None:
    print(line, flush=True)


def _go() -> None:
    _say("ready")
    sys.stdin.readline()


def main(argv: list[str]) -> None:
    verb, url = argv[0], argv[1]
    engine = make_engine(url)
    if verb == "race":
        name, holder = argv[2], argv[3]
        store = LeaseStore(engine)
        engine.connect().close()  # pool warm: the race is on the claim, not the connect
        _go()
        grant = store.try_acquire(name, holder, 30)
        _say(f"won {grant.token}" if grant else "lost")
    elif verb == "hold":
        name, holder, ttl_s = argv[2], argv[3], float(argv[4])
        held = threading.Event()
        single = Singleton(LeaseStore(engine), name, holder, ttl_s=ttl_s, poll_s=0.2,
                           on_acquired=lambda g: (_say(f"held {g.token}"), held.set()),
                           on_lost=lambda: _say("lost"))  # fmt: skip
        single.start()
        threading.Event().wait()
    elif verb == "upgrade":
        _go()
        _say(upgrade(engine))
    elif verb == "listen":
        bus = PgBus(engine)
        bus.subscribe(argv[2], _say)
        bus.start()
        bus.connected.wait(10)
        _say("ready")
        threading.Event().wait()
    else:
        raise SystemExit(f"unknown verb {verb}")


if __name__ == "__main__":
    main(sys.argv[1:])
