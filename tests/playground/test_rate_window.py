"""The sliding window behind the chat's rate limit and the login throttle."""

from types import SimpleNamespace

from playground import rate_window


def test_the_sliding_window_forgets_quiet_clients_once_many_are_known(monkeypatch):
    clock = [0.0]
    # The window's own clock only: patching time.monotonic itself would stop every event loop's timers.
    monkeypatch.setattr(rate_window, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(rate_window, "MAX_CLIENTS", 3)
    window = rate_window.SlidingWindow(limit=2, seconds=60)
    assert [window.take("a"), window.take("a"), window.take("a")] == [0, 0, 60]  # full: wait the whole minute
    clock[0] = 45
    assert window.take("a") == 15
    for client in "bcd":
        window.take(client)
    clock[0] = 100  # a's events are now a minute old; b, c and d's are 55 s old
    window.take("e")
    assert set(window.seen) == {"b", "c", "d", "e"}
    clock[0] = 150
    window.take("f")  # more than MAX_CLIENTS known again: the quiet ones go
    assert set(window.seen) == {"e", "f"}
    window.give_back("f")
    assert not window.seen["f"]
