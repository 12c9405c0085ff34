"""The bridge's publish window (fleet_server/mqtt/bridge.py `_PublishWindow`): at most `size`
publishes handed to paho unacked, the rest sent in order as acks free slots, from any thread."""

from __future__ import annotations

import threading

from fleet_server.mqtt.bridge import _PublishWindow


def test_window_holds_back_beyond_its_size_and_sends_in_order_as_acks_come() -> None:
    sent: list[str] = []
    window = _PublishWindow(2, lambda topic, payload, retain: sent.append(topic))
    for i in range(5):
        window.submit(f"t{i}", b"", False)
    assert sent == ["t0", "t1"]
    assert window.waiting == 3
    window.done()
    window.done()
    assert sent == ["t0", "t1", "t2", "t3"]
    for _ in range(3):
        window.done()  # t4 sent by the first; the rest only free slots
    assert sent == [f"t{i}" for i in range(5)]
    assert window.waiting == 0
    window.submit("a", b"", False)
    window.submit("b", b"", False)
    window.submit("c", b"", False)
    assert sent[-2:] == ["a", "b"]  # the window is back to 2 free slots, not more


def test_window_from_many_threads_sends_everything_once() -> None:
    sent: list[str] = []
    lock = threading.Lock()

    def send(topic: str, payload: bytes, retain: bool) -> None:
        with lock:
            sent.append(topic)

    window = _PublishWindow(10, send)

    def producer(k: int) -> None:
        for i in range(500):
            window.submit(f"{k}-{i}", b"", True)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    acked = 0
    while acked < 2000:
        with lock:
            pending = len(sent) - acked
        for _ in range(pending):
            window.done()
        acked += pending
        if not pending and not any(t.is_alive() for t in threads) and window.waiting == 0:
            break
    for t in threads:
        t.join()
    assert sorted(sent) == sorted(f"{k}-{i}" for k in range(4) for i in range(500))
