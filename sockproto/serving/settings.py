"""The settings a factory gives its protocols: one frozen object, validated in one place.

Each service has a frozen dataclass of its settings (``FrameSettings``,
``HalfCloseSettings``, ``DatagramSettings``, in the service's package) built on the
bases here.  A factory holds one; every protocol it builds holds a reference to it in
one attribute, ``settings``: an idle connection pays one pointer for all of them.  A
protocol built without a factory builds its own from its constructor's arguments, so
both ways meet in one constructor and one validation (``__post_init__``).

A factory's settings are read and set as its attributes through :class:`Setting`
descriptors (``factory.max_payload = 1024``): setting one makes a new settings
object (:func:`dataclasses.replace`, so validated again), which the protocols built
from then on get.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar, overload

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..handlers import Handler
from .answering import Answering
from .connections import ConnectionTracker
from .logs import LogLimiter
from .metrics import ServiceMetrics
from .timers import TimeoutSweep, TimerQueue

__all__ = ["ServiceSettings", "Setting", "StreamSettings", "check_timeout"]


def check_timeout(name: str, value: float | None) -> None:
    """Refuse a timeout that is neither ``None`` nor positive.

    :raises ValueError: naming the setting.
    """
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be positive or None, not {value}")


@dataclass(frozen=True, slots=True, eq=False)
class ServiceSettings:
    """What every service's protocols share: the handler's lifecycle and the counters.

    :ivar handler: see :mod:`sockproto.handlers`.
    :ivar handler_timeout: seconds an asynchronous handler has to answer; ``None``: no limit.
    :ivar metrics: the service's counters.
    :ivar limiter: rate-limits the service's log events.
    :ivar clock: schedules timeouts (``None``: the global reactor).
    :ivar answering: the :class:`~sockproto.serving.answering.Answering` made of the
        above (derived, not given).
    """

    handler: Handler
    metrics: ServiceMetrics
    limiter: LogLimiter
    handler_timeout: float | None = None
    clock: IReactorTime | None = None
    log: Logger | None = None
    answering: Answering = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_timeout("handler_timeout", self.handler_timeout)
        answering = Answering(
            self.handler,
            timeout=self.handler_timeout,
            metrics=self.metrics,
            limiter=self.limiter,
            clock=self.clock,
            log=self.log,
        )
        object.__setattr__(self, "answering", answering)


@dataclass(frozen=True, slots=True, eq=False)
class StreamSettings(ServiceSettings):
    """What the connections of one stream service share, besides their service's own settings.

    :ivar factory: the factory that built the connection (``None`` without one).
    :ivar tracker: counts, limits and drains the service's connections.
    :ivar timers: serves every connection's timeout on one reactor call.
    :ivar sweep: sets a fixed deadline only on the connections still waiting a second later.
    :ivar log_connections: whether each connection's opening and closing are logged (a
        factory decides it from its ``log_connections`` and ``noisy``).
    """

    factory: Any = None
    tracker: ConnectionTracker[Any] | None = None
    timers: TimerQueue | None = None
    sweep: TimeoutSweep | None = None
    log_connections: bool = True


S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


class _HasSettings(Protocol[S]):
    settings: S


class Setting(Generic[T]):
    """A factory attribute kept in the factory's frozen ``settings``.

    Reading it reads the settings; setting it replaces them with a copy holding the new
    value, validated again.  The protocols built from then on get the new settings.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        value: T = getattr(obj.settings, self.name)  # type: ignore[attr-defined]
        return value

    def __set__(self, obj: _HasSettings[Any], value: T) -> None:
        obj.settings = replace(obj.settings, **{self.name: value})
