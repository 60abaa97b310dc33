"""Session KV caches kept between turns: an LRU of idle caches, and the keys that make prefix reuse work.

Each stored cache remembers the key of every position it holds (a token id, or `(content_id, row)` for a
spliced embedding row), so a new turn of the session reuses the longest common prefix and prefills only
the rest. Torch-free: the caches are only asked for `length`, `nbytes` and `shrink_to_fit()`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.llm.model import KVCache

DEFAULT_KV_CACHE_MAX_TOKENS = 262_144  # idle session positions kept; ~14.7 GB in bf16 at full dims

# Identity of one prompt position: a token id, or (content_id, row index) for a spliced embedding row.
Key = int | tuple[str, int]


def common_prefix_length(a: Sequence[Key], b: Sequence[Key]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


@dataclass
class CacheEntry:
    cache: KVCache
    keys: list[Key]  # one per valid cache position


class SessionCacheStore:
    """Idle session caches, least recently used first, bounded by sessions and by positions held
    (allocated memory is at most one KV block per session above that, see `KVCache.shrink_to_fit`).

    A request that reuses an entry takes it out (`take`) and puts its own back when it ends, so an entry
    in use can never be evicted or handed to a second request.
    """

    def __init__(self, *, max_sessions: int, max_tokens: int):
        self.max_sessions = max_sessions
        self.max_tokens = max_tokens
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.tokens = 0
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(entry.cache.nbytes for entry in self._entries.values())

    def peek(self, session_id: str) -> CacheEntry | None:
        return self._entries.get(session_id)

    def take(self, session_id: str) -> CacheEntry | None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self.tokens -= entry.cache.length
        return entry

    def put(self, session_id: str, entry: CacheEntry) -> None:
        """Store as most recent (replacing an older entry of the session), then evict to the bounds."""
        self.take(session_id)
        entry.cache.shrink_to_fit()
        self._entries[session_id] = entry
        self.tokens += entry.cache.length
        while self._entries and (len(self._entries) > self.max_sessions or self.tokens > self.max_tokens):
            _, evicted = self._entries.popitem(last=False)
            self.tokens -= evicted.cache.length
            self.evicted_total += 1

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0
