"""<Exchange>: the adapter of the <exchange>_<market> venue (template; docs/ARCHITECTURE.md, "Adding a table or a
venue").

The base class (:class:`hftdb.exchanges.base.ExchangeAdapter`) runs connections, subscriptions, keep-alive,
reconnects, symbol sync and the REST pollers; a venue only says how its protocol spells each step. Every hook
below raises until it is written; the parser (``parse_<exchange>.py``, a
:class:`hftdb.exchanges.parsing.VenueParser`) turns its frames into records and rejects bad ones by reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..base import ExchangeAdapter
from ..signing import Credentials

__all__ = ["TemplateAdapter"]


class TemplateAdapter(ExchangeAdapter):
    """Template: rename, name the class in the venue's ``VenueSpec`` (``hftdb/venues.py``), set the limits to the
    venue's documented ones, then add the class to the tuple in ``hftdb/exchanges/registry.py``.

    The venue's URLs, channels, default channels and funding channels are its ``VenueSpec``'s (``rest_url``,
    ``ws_url``, ``channels``, ``default_channels``, ``funding_channels``): the base class reads them from there, so
    the adapter writes none of them out. It adds the paths: :meth:`ws_endpoint` to ``self.ws_url``, each request's
    path to ``self.rest_url``.
    """

    venues = ()  # served_by("<Exchange>Adapter") (hftdb.venues), once its VenueSpec names this class
    max_topics_per_connection = 1024
    max_topics_per_message = 200
    ping_mode = "idle"
    default_ping_interval = 20.0
    default_stale_after = 60.0
    consecutive_ids = False

    def new_parser(self) -> Any:
        """A parser of this venue's payloads (one per connection)."""
        raise NotImplementedError("return <Exchange>Parser(self.venue, account=self.account, symbol_ids=self.symbol_ids())")

    def symbols_request(self) -> tuple[str, str]:
        """Path and query of the instruments request."""
        raise NotImplementedError

    def balances_request(self) -> tuple[str, str]:
        """Path and (unsigned) query of the balances request."""
        raise NotImplementedError

    def sign(self, credentials: Credentials, path: str, query: str) -> tuple[str, dict[str, str]]:
        """The final query and the headers of a signed request (hftdb/exchanges/signing.py holds the HMACs)."""
        raise NotImplementedError

    def is_auth_failure(self, status: int, body: str) -> bool:
        """Whether an answer means the venue refused our key, signature or timestamp."""
        raise NotImplementedError

    def ws_endpoint(self) -> str:
        """The URL each stream connection opens: ``f"{self.ws_url}/<the venue's stream path>"``."""
        raise NotImplementedError

    def topic(self, symbol: str, channel: str) -> str:
        """The venue's name of one stream."""
        raise NotImplementedError

    def subscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """The subscribe requests for one connection's topics, each with the number of acks it will get."""
        raise NotImplementedError

    def unsubscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """The unsubscribe requests for ``topics`` of one connection, each with the number of acks it will get."""
        raise NotImplementedError
