"""Shared HTTP transport for API destinations: session, base URL and auth from the connection's
``HttpHook`` (``data_out.destinations.http_hook``, handed in), bounded retries here.

Retries follow one rule set for every vendor: connection errors, timeouts, 429 and 5xx are retried with
exponential backoff and jitter, never sooner than the server's ``Retry-After``, for a bounded number of
attempts; anything the vendor's ``classify`` calls fatal (other 4xx) fails the batch at once with the
vendor's message, scrubbed of anything that looks like an email or a phone number.

Every transport error ``requests`` can raise becomes a ``DestinationError`` whose text names the kind of
failure and never the request's headers or URL (``requests`` quotes a refused header value, token
included, and URLs can carry tokens in their query). A redirect to another host or port is not followed:
every vendor authenticates with headers of its own, not only ``Authorization``, and a 307 resends the payload.

Connection extras understood by every HTTP destination (all optional):
``timeout`` (seconds, default 30), ``max_attempts`` (default 5), ``backoff_initial`` (seconds, default 1),
``backoff_max`` (default 60), ``max_retry_after`` (longest Retry-After honoured in-task, default 300).
"""

from __future__ import annotations

import logging
import string
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar
from urllib.parse import quote_plus, urljoin, urlsplit

import requests
import urllib3
from requests.auth import AuthBase
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from data_out.connections import ConnectionInfo
from data_out.destinations.base import DestinationError, PayloadTooLarge
from data_out.errors import VENDOR_NO_RESPONSE_NEXT_STEP
from data_out.redact import register_secret, scrub

log = logging.getLogger(__name__)

T = TypeVar("T")


#: what ``quote_plus`` leaves as it is
_FORM_SAFE = frozenset(string.ascii_letters + string.digits + "_.-~")
#: the ASCII characters it escapes
_FORM_UNSAFE = tuple(chr(i) for i in range(128) if chr(i) not in _FORM_SAFE)
FORM_CONTENT_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}


def form_encode(fields: dict[str, str]) -> str:
    """``urlencode(fields)``, the body ``requests`` builds from ``data=``, several times faster for JSON.

    ``quote_plus`` looks every character up in Python: 0.17 s for one Meta batch of 10,000 rows
    (1.4 MB of JSON), a third of the batch's push. ``json.dumps`` writes ASCII, so each character
    to escape is replaced across the whole value at once (``%`` first, the space last: the escapes
    bring in both); anything else non-ASCII goes through ``quote_plus``. Which characters are there is
    asked one candidate at a time (``c in value`` scans in C): a set of the value's characters costs
    twenty times as much over a megabyte.
    """
    return "&".join(f"{quote_plus(k)}={_form_quote(v)}" for k, v in fields.items())


def _form_quote(value: str) -> str:
    if not value.isascii():
        return quote_plus(value)
    present = [c for c in _FORM_UNSAFE if c in value]
    for c in sorted(present, key=lambda c: (c != "%", c == " ")):
        value = value.replace(c, "+" if c == " " else f"%{ord(c):02X}")
    return value


class Verdict(Enum):
    OK = "ok"
    RETRY = "retry"
    FATAL = "fatal"


def default_classify(resp: requests.Response) -> Verdict:
    if resp.status_code < 300:
        return Verdict.OK
    if resp.status_code == 429 or resp.status_code >= 500 or resp.status_code == 408:
        return Verdict.RETRY
    return Verdict.FATAL


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@dataclass(frozen=True)
class RetryPolicy:
    timeout: float = 30.0
    max_attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> RetryPolicy:
        fields = {k: type(getattr(cls, k))(extra[k]) for k in cls.__dataclass_fields__ if k in extra}
        return cls(**fields)


class RefreshableAuth(AuthBase):
    """Auth whose credential can be renewed (OAuth access tokens): a 401 gets one ``refresh`` and one retry.

    ``refused`` turns the second 401 into the terminal error that names the credential to fix.
    """

    def refresh(self) -> None:
        raise NotImplementedError

    def refused(self, message: str) -> DestinationError:
        return DestinationError(message, retryable=False)


def _origin(url: str) -> str:
    """Host and port of a URL, without its login, path or query (which may carry secrets)."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class CrossHostRedirect(requests.RequestException):
    """A vendor answered with a redirect to another host or port; it is not followed."""


class ApiSession(requests.Session):
    """A session that follows redirects only on the host it was sent to.

    ``requests`` follows a redirect anywhere and drops only ``Authorization`` on the way
    (``Session.rebuild_auth``): TikTok's ``Access-Token``, Google's ``developer-token``, our webhook
    signature, and with a 307 or 308 the whole payload, would reach whatever host the redirect names.
    No vendor API redirects its calls to another host, so a redirect that leaves the host or port
    (``should_strip_auth``'s rule; ``http`` to ``https`` on the same host is allowed) fails the request
    before anything is sent there.
    """

    @classmethod
    def adopt(cls, session: requests.Session) -> ApiSession:
        """``session`` as configured (``HttpHook.get_conn``'s adapters, proxies, verify...), as an ``ApiSession``."""
        if isinstance(session, cls):
            return session
        adopted = cls()
        for name in requests.Session.__attrs__:  # the state requests itself pickles
            setattr(adopted, name, getattr(session, name))
        return adopted

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        old, new = response.request.url or "", prepared_request.url or ""
        if self.should_strip_auth(old, new):
            raise CrossHostRedirect(f"redirected from {_origin(old)} to {_origin(new)}")
        super().rebuild_auth(prepared_request, response)


#: transport failures that may pass: retried with backoff like a 5xx
_TRANSIENT = (
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.exceptions.RetryError,
    urllib3.exceptions.HTTPError,
)
_BAD_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.URLRequired,
)


def transport_problem(exc: BaseException) -> str:
    """What went wrong sending a request, in words that never quote its headers or URL."""
    kind = type(exc).__name__
    if isinstance(exc, requests.exceptions.InvalidHeader | UnicodeError):
        return (
            f"a header value is not valid HTTP ({kind}: a line break, surrounding whitespace or a character "
            "HTTP cannot carry); correct the connection's password or extras (the value is not shown)"
        )
    if isinstance(exc, _BAD_URL):
        return f"the URL is not valid ({kind}); correct the connection's host (the URL is not shown)"
    if isinstance(exc, CrossHostRedirect):
        return f"{exc}, which is not followed; correct the connection's host if the vendor moved"
    if isinstance(exc, requests.TooManyRedirects):
        return f"too many redirects ({kind}); correct the connection's host"
    return f"the request could not be sent ({kind})"


class SessionSource(Protocol):
    """What the client needs of a connection's hook (``http_hook.DataOutHttpHook``)."""

    base_url: str

    def get_conn(self, headers: dict[Any, Any] | None = None) -> ApiSession: ...


class HttpClient:
    """The session of a connection's ``HttpHook`` (base URL, credential), with the retry policy.

    ``hook``: the vendor's hook (``http_hook.http_hook(conn, default_base_url)`` builds the one of the
    connection's type). ``headers`` and ``auth`` add to or replace what the hook put on the session.
    """

    def __init__(
        self,
        vendor: str,
        conn: ConnectionInfo,
        *,
        hook: SessionSource,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | AuthBase | None = None,
        classify: Callable[[requests.Response], Verdict] = default_classify,
        describe_error: Callable[[requests.Response], str] | None = None,
    ) -> None:
        self.vendor = vendor
        self.hook = hook
        self.policy = RetryPolicy.from_extra(dict(conn.extra))
        self.session: ApiSession = self.hook.get_conn(headers)
        self.base_url = self.hook.base_url
        if auth:
            self.session.auth = auth
        register_secret(conn.password)  # masked wherever a vendor's answer echoes it
        self.classify = classify
        self.describe_error = describe_error or (lambda r: r.text)
        self.attempts = 0  # requests sent, for run figures and tests

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(multiplier=self.policy.backoff_initial, max=self.policy.backoff_max)(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None) or 0.0
        if retry_after > self.policy.max_retry_after:
            raise DestinationError(
                f"{self.vendor}: asked to wait {retry_after:.0f}s before retrying, longer than max_retry_after "
                f"({self.policy.max_retry_after:.0f}s); the task will be retried later",
                retryable=True,
            )
        return max(backoff, retry_after)

    def request(
        self,
        method: str,
        path: str,
        *,
        resend_unanswered: bool = True,
        members: Collection[str] = (),
        **kwargs: Any,
    ) -> requests.Response:
        """Send with the retry policy. ``resend_unanswered=False``: a request whose outcome is unknown (no
        answer, or a 5xx) is not sent again but fails retryably, for calls the vendor must not receive
        twice; a refusal that applied nothing (429, a rate-limit code) is still retried. ``members``: the
        member keys the request carries, masked in the vendor's error if it quotes them."""
        url = urljoin(self.base_url.rstrip("/") + "/", path.lstrip("/"))
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            return retrying(self._once, method, url, path, resend_unanswered, members, **kwargs)
        except _Retryable as exc:
            raise DestinationError(
                f"{self.vendor}: {method} {path} still failing after {self.policy.max_attempts} attempts: {exc}",
                retryable=True,
            ) from None

    def _once(
        self,
        method: str,
        url: str,
        path: str,
        resend: bool,
        members: Collection[str],
        attempt_headers: Callable[[], dict[str, str]] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One attempt. ``attempt_headers`` is called anew for each attempt (a signature with a fresh
        timestamp: a retry after a long Retry-After must not arrive outside the receiver's window)."""
        self.attempts += 1
        if attempt_headers is not None:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **attempt_headers()}
        started = time.monotonic()
        resp = self._send(method, url, path, resend, **kwargs)
        log.debug("%s %s %s -> %d in %.2fs", self.vendor, method, path, resp.status_code, time.monotonic() - started)
        if resp.status_code == 401 and isinstance(self.session.auth, RefreshableAuth):
            resp = self._reauthorised(method, url, path, **kwargs)
        verdict = self.classify(resp)
        if verdict is Verdict.OK:
            return resp
        message = scrub(f"HTTP {resp.status_code}: {self.describe_error(resp)}", members=members)
        if verdict is Verdict.RETRY:
            if not resend and resp.status_code >= 500:
                raise _unanswered(self.vendor, method, path, message)
            log.warning("%s %s %s: %s; will retry", self.vendor, method, path, message)
            raise _Retryable(message, _retry_after(resp))
        if resp.status_code == 413:
            sent = len(resp.request.body or b"")
            raise PayloadTooLarge(
                f"{self.vendor}: {method} {path} refused a {sent}-byte request as too large: {message}"
            )
        raise DestinationError(f"{self.vendor}: {method} {path} refused: {message}", retryable=False)

    def _reauthorised(self, method: str, url: str, path: str, **kwargs: Any) -> requests.Response:
        """The token was refused: renew it once and send again; a second 401 is the credential's fault."""
        auth = self.session.auth
        assert isinstance(auth, RefreshableAuth)
        log.info("%s %s %s: access token refused; refreshing it once", self.vendor, method, path)
        auth.refresh()
        self.attempts += 1
        resp = self._send(method, url, path, True, **kwargs)  # the 401 applied nothing: sending again is safe
        if resp.status_code == 401:
            raise auth.refused(scrub(f"{self.vendor}: {method} {path} refused: HTTP 401: {self.describe_error(resp)}"))
        return resp

    def _send(self, method: str, url: str, path: str, resend: bool, **kwargs: Any) -> requests.Response:
        """``session.request``, with every transport error turned into one that quotes no header or URL."""
        try:
            return self.session.request(method, url, timeout=self.policy.timeout, **kwargs)
        except (requests.Timeout, *_TRANSIENT) as exc:
            if isinstance(exc, requests.Timeout):
                why = f"no response within {self.policy.timeout:.0f}s ({type(exc).__name__})"
            else:
                why = f"connection failed ({type(exc).__name__})"
            if not resend:
                raise _unanswered(self.vendor, method, path, why) from None
            raise _Retryable(why) from None
        except (requests.RequestException, UnicodeError) as exc:  # the exception's text can quote a header or URL
            raise DestinationError(
                f"{self.vendor}: {method} {path} not sent: {transport_problem(exc)}", retryable=False
            ) from None

    def close(self) -> None:
        self.session.close()
        close_auth = getattr(self.session.auth, "close", None)
        if callable(close_auth):
            close_auth()


def _unanswered(vendor: str, method: str, path: str, why: str) -> DestinationError:
    return DestinationError(
        f"{vendor}: {method} {path}: {why}; whether it was applied is unknown and it must not be sent twice, "
        "so it was not re-sent: the next attempt starts it again from the beginning",
        retryable=True,
        next_step=VENDOR_NO_RESPONSE_NEXT_STEP,
    )


def base_url(conn: ConnectionInfo, default: str) -> str:
    """``host`` may be a full URL (``http://127.0.0.1:8080``) or a host name with optional port."""
    host = (conn.host or "").strip()
    if not host:
        return default
    if "://" in host:
        return host if not conn.port else f"{host.rstrip('/')}:{conn.port}"
    scheme = str(conn.extra.get("scheme") or "https")
    return f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")


def split_by_size(items: Sequence[T], size_of: Callable[[T], int], max_total: int) -> list[list[T]]:
    """Split ``items`` in order into chunks whose summed size stays within ``max_total``.

    Deterministic, so a replayed batch splits the same way and each part keeps its idempotency key.
    An item larger than ``max_total`` on its own is returned alone; the caller rejects it.
    """
    chunks: list[list[T]] = []
    current: list[T] = []
    total = 0
    for item in items:
        size = size_of(item)
        if current and total + size > max_total:
            chunks.append(current)
            current, total = [], 0
        current.append(item)
        total += size
    if current:
        chunks.append(current)
    return chunks


def part_key(key: str, index: int, parts: int) -> str:
    """Idempotency key of one request of a batch that needed ``parts`` requests."""
    return key if parts == 1 else f"{key}-{index}"
