"""Request tokens (kmpray/client/remote.py ``_tokens``): what lets the scheduler answer a
retried enqueue from its stored answer instead of applying it twice. Each call's first
try needs a token no other call of any client ever had; its retries carry that token
marked as a retry."""

from __future__ import annotations

import threading

from kmpray.client.remote import _tokens
from kmpray.protocol import RETRY_MARK
from tests.forked import in_a_forked_child


def test_each_call_gets_its_own_token_and_its_retries_carry_it_marked() -> None:
    tries = _tokens(True)
    (first,), (retry,), (again,) = next(tries), next(tries), next(tries)
    assert retry == again == first + RETRY_MARK
    assert next(_tokens(False)) == ()  # a call without a token carries nothing
    seen: list[str] = []

    def many() -> None:
        seen.extend(next(_tokens(True))[0] for _ in range(5_000))

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(seen)) == len(seen) == 20_000 and first not in seen


def test_a_forked_child_draws_tokens_of_its_own() -> None:
    def three() -> bytes:  # in the child: the same count as the parent had, so only a new prefix helps
        return "\n".join(next(_tokens(True))[0] for _ in range(3)).encode()

    child = in_a_forked_child(three).decode().split("\n")
    mine = [next(_tokens(True))[0] for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(mine)
    prefix = mine[0].rsplit("-", 1)[0]
    assert all(not t.startswith(prefix) for t in child)
