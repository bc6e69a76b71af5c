"""Secrets out of text: the one function every log line, error message, repr and CLI line goes through.

:func:`redact` replaces, in any string:

* the password of a DSN written as a URL, with or without its scheme (``postgresql://user:pw@host/db``,
  ``postgres://...``, ``user:pw@host/db``), percent-encoded or not;
* a ``password=`` value: libpq keyword/value DSNs (``password=pw``, ``password='quoted pw'``), query strings
  (``?password=pw&sslmode=require``), environment dumps (``PGPASSWORD=pw``), ``"password": "pw"`` in JSON;
* a password in SQL (``ALTER ROLE ... PASSWORD 'pw'``, as ``pg_stat_statements`` keeps it);
* a registered DSN's password of any length or form (spaces, quotes, an unencoded ``#``) where it stands as one
  (``user:pw@``, ``password=pw``);
* every *registered* secret wherever it appears, as written and in its percent-encoded, ``+``-encoded,
  JSON-escaped and repr-escaped forms, in any letter case: DSN passwords (registered when settings, a
  :class:`~hftdb.manager.DatabaseManager` or a replica list are built), API keys, secrets and passphrases
  (registered when :class:`~hftdb.exchanges.signing.Credentials` are built, from the environment, the secrets file
  or code), and ``$PGPASSWORD`` (as it is when settings are loaded, credentials or a manager built, or logging
  configured: see :func:`register_environment`).

Each is replaced by ``***``. A registered secret shorter than :data:`MIN_SECRET_LENGTH` characters is redacted
only where the structure above shows it is a password (a URL's userinfo, a ``password=``), never as a bare
substring: a 3-letter password would otherwise star out every word that contains it.

This module sits at the bottom of the layers: no I/O, no imports of hftdb. The registry is process-wide and only
grows (a secret, once seen, stays secret for the life of the process).
"""

from __future__ import annotations

import json
import os
import re
import threading
from urllib.parse import parse_qs, quote, quote_plus, unquote, unquote_plus, urlsplit

__all__ = ["MIN_SECRET_LENGTH", "MASK", "redact", "register_secret", "register_dsn", "register_environment",
           "dsn_password", "unencoded_userinfo_password"]

#: The shortest registered secret redacted as a bare substring (see the module docstring).
MIN_SECRET_LENGTH = 6
#: What a secret becomes.
MASK = "***"

# A URL's userinfo password, scheme optional: greedy up to the last "@" before the host, so an unencoded "@" in
# the password does not leave its tail behind. An empty password (the embedded server's "postgres:@") stays.
_USERINFO = re.compile(
    r"(?P<pre>(?:[A-Za-z][A-Za-z0-9+.-]*://)?[^\s:/@?#'\"=]*:)(?P<pw>[^\s/?#'\"]+)(?=@)"
)
# password=... in a query string: the value ends at "&" (the next parameter is not secret). A ":" that ends the
# value before a space or the end of the text is the message's ("...?password=pw: refused"), not the password's.
_QUERY = re.compile(r"(?i)(?P<pre>[?&]pass(?:word|wd)=)(?P<pw>[^\s&#'\"]+?)(?=:?(?:[\s&#'\"]|$))")
# password=..., PGPASSWORD=..., "password": "..." elsewhere: a quoted value to its closing quote, else to a space,
# a quote or "&" (a query string's next parameter). Erring long: a ")" after the value goes with it; only a ":"
# that ends the value before a space or the end of the text is left, as the message's ("password=pw: refused").
# (A bare "passwd:" is a path's as often as not, "/etc/passwd: not a directory": only a quoted key or one that
# follows no path or word character takes a ":".)
_KEYWORD = re.compile(
    r"(?i)(?P<pre>(?:pass(?:word|wd)(?:[\"']\s*[=:]|\s*=)|(?<![\w/.\\-])pass(?:word|wd)\s*:)\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s'\"&]+?(?=:?(?:[\s'\"&]|$)))"
)

# PASSWORD 'pw' in SQL (CREATE/ALTER ROLE or USER, [ENCRYPTED] PASSWORD), with '' for a quote inside.
_SQL = re.compile(r"(?i)(?P<pre>\bpassword\s+)(?P<pw>'(?:[^']|'')*'?)")

_KEYVALUE = re.compile(r"\s*[A-Za-z_]+\s*=")

_lock = threading.Lock()
_secrets: set[str] = set()
_literal: re.Pattern[str] | None = None
_pgpassword: str | None = None
#: DSN passwords of any length, as written and decoded: starred where they stand as a password (see
#: :func:`register_dsn`), which the patterns above cannot always tell (a space or a quote ends their match).
_dsn_passwords: set[str] = set()
_in_dsn: re.Pattern[str] | None = None


def _variants(secret: str) -> set[str]:
    """The forms a secret takes on its way into text: URL query and path encoding, JSON and Python string escapes."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), repr(secret)[1:-1],
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def register_secret(secret: str | None) -> None:
    """Make ``secret`` (an API key, a password...) redacted everywhere from now on, in every encoded form.

    None, and strings shorter than :data:`MIN_SECRET_LENGTH`, are ignored (see the module docstring).
    """
    register_environment()
    _register(secret)


def _register(secret: str | None) -> None:
    global _literal
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return
    forms = _variants(secret) - _secrets
    if not forms:
        return
    with _lock:
        _secrets.update(forms)
        # Longest first, so a secret that contains another is starred whole.
        alternation = "|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True))
        _literal = re.compile(alternation, re.IGNORECASE)


def dsn_password(dsn: str | None) -> str | None:
    """The password a DSN carries (URL userinfo, ``?password=`` or keyword/value ``password=``), decoded; or None."""
    forms = _dsn_password_forms(dsn)
    return forms[0] if forms else None


def _dsn_password_forms(dsn: str | None) -> list[str]:
    """The password of ``dsn`` decoded first, then as written and the other readings a parser may make of it (an
    unencoded ``#``, ``?`` or ``/`` ends urllib's host part; ``+`` in a query string is a space to some)."""
    if not dsn:
        return []
    if _KEYVALUE.match(dsn):
        m = _KEYWORD.search(dsn)
        if m is None:
            return []
        value = _whole(dsn, m)
        if value[:1] in ("'", '"'):
            closed = len(value) > 1 and value[-1] == value[0]
            value = re.sub(r"\\(.)", r"\1", value[1:-1] if closed else value[1:])
        return [value] if value else []
    text = dsn if "://" in dsn else "postgresql://" + dsn
    forms: list[str] = []
    try:
        parts = urlsplit(text)
        password, netloc = parts.password, parts.netloc
    except ValueError:
        m = _USERINFO.search(dsn)
        password, netloc = (m.group("pw") if m is not None else None), ""
    written = unencoded_userinfo_password(text) if "@" not in netloc else None
    if written is None and "@" in netloc:
        # As written: urllib drops a tab or a line break from a URL, which the text quoting the DSN still holds.
        m = re.match(r"[^:/@]*:([^@/?#]*)@", text.partition("://")[2])
        written = m.group(1) if m is not None else None
    if password:
        forms += [unquote(password), password]
    if written:
        forms += [unquote(written), written]
    try:
        parsed = parse_qs(urlsplit(text).query)  # (as asyncpg reads it)
    except ValueError:
        parsed = {}
    forms += parsed.get("password", [])[:1]
    query = text.partition("?")[2]
    for item in query.split("&") if query else ():
        key, _, value = item.partition("=")
        if key.lower() in ("password", "passwd") and value:
            forms += [unquote(value), value, unquote_plus(value)]
    return list(dict.fromkeys(forms))


def unencoded_userinfo_password(dsn: str) -> str | None:
    """The password of a URL DSN that holds an unencoded ``#``, ``?``, ``/``, ``[`` or ``]``, as written (urllib ends
    the host part at the first of them, so it finds no password), or None when there is no such password."""
    rest = dsn.partition("://")[2]
    userinfo = rest.rpartition("@")[0]
    user, colon, password = userinfo.partition(":")
    if not colon or "@" in user or "/" in user or not any(c in password for c in "#?/[]"):
        return None
    head = re.split(r"[#?/\[\]]", password, maxsplit=1)[0]
    if head.isdigit() and "[" not in password and "]" not in password:
        return None  # a port: "host:5432/db?x=a@b" has an "@" in its query, not in a password
    return password


def _whole(dsn: str, m: re.Match[str]) -> str:
    """The matched password with the ":" the patterns leave to a message: in a DSN alone it is the password's."""
    end = m.end("pw")
    return m.group("pw") + (":" if dsn[end:end + 1] == ":" else "")


def register_dsn(dsn: str | None) -> None:
    """Register the password of ``dsn`` (decoded, as written, encoded) with :func:`register_secret`, and, whatever
    its length, where it stands as a password (``user:pw@``, ``password=pw``)."""
    global _in_dsn
    register_environment()
    forms = _dsn_password_forms(dsn)
    for password in forms:
        register_secret(password)
        register_secret(quote(password, safe=""))
        for piece in re.split(r"[#?/\[\]\s'\"]", password):
            register_secret(piece)  # what a parser cut at one of these may quote
    if forms and not _dsn_passwords.issuperset(forms):
        with _lock:
            _dsn_passwords.update(forms)
            alternation = "|".join(re.escape(s) for s in sorted(_dsn_passwords, key=len, reverse=True))
            _in_dsn = re.compile(rf"(?i)(?P<pre>:|pass(?:word|wd)=)(?:{alternation})(?=@|&|#|\s|'|\"|:|$)")


def register_environment() -> None:
    """Register ``$PGPASSWORD`` as it is now. Loading settings, building credentials or a manager and configuring
    logging call it; :func:`redact` does not (a lookup in ``os.environ`` would cost more than the redaction)."""
    global _pgpassword
    value = os.environ.get("PGPASSWORD")
    if value and value != _pgpassword:
        _pgpassword = value
        _register(value)


def redact(text: str) -> str:
    """``text`` with every DSN password and registered secret replaced by ``***`` (see the module docstring)."""
    if _literal is not None:
        text = _literal.sub(MASK, text)
    if _in_dsn is not None:
        text = _in_dsn.sub(lambda m: m.group("pre") + MASK, text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group("pre") + MASK, text)
    if "ass" in text or "ASS" in text:
        text = _QUERY.sub(lambda m: m.group("pre") + MASK, text)
        text = _KEYWORD.sub(_keyword_mask, text)
        text = _SQL.sub(lambda m: m.group("pre") + "'" + MASK + "'", text)
    return text


def _keyword_mask(m: re.Match[str]) -> str:
    value = m.group("pw")
    quote_char = value[:1] if value[:1] in ("'", '"') else ""
    return f"{m.group('pre')}{quote_char}{MASK}{quote_char}"
