"""Which model (and version) an event goes to: topic defaults, A/B arms, shadows.

Pure logic, no I/O. For each decoded event:

1. the requested name is the event's ``model`` field, else the default of the
   topic it came from (``routing.topic_models``), else ``triton.default_model``;
2. if ``routing.experiments`` has arms for that name, the event's key (its id
   when it has no key) picks one arm, deterministically: ``blake2b(name, key)``
   gives a point in [0, 1) that falls into one arm's share of the weights.
   The same key always lands in the same arm, and arms of different
   experiments are drawn independently;
3. otherwise the name itself is served, in whichever version the backend serves.

Shadows (``routing.shadows``) are looked up by the served model's name: every
batch sent to it is also sent, best effort, to each shadow target.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from engine.errors import ConfigError
from engine.settings import ArmSettings, RouteTarget, RoutingSettings, Settings

_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one event goes: a served model, a pinned version ("" = the backend's) and its A/B arm."""

    model: str
    version: str = ""
    arm: str = ""


def bucket(experiment: str, key: bytes) -> float:
    """A stable point in [0, 1) for ``key`` in ``experiment`` (64 bits of blake2b)."""
    digest = hashlib.blake2b(experiment.encode() + b"\0" + key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class _Experiment:
    name: str
    arms: tuple[ArmSettings, ...]
    bounds: tuple[float, ...]  # cumulative weight share at each arm's upper end

    @classmethod
    def build(cls, name: str, arms: Sequence[ArmSettings]) -> _Experiment:
        if not arms:
            raise ConfigError(f"experiment {name!r} has no arms")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"experiment {name!r}: arm names must be unique, got {names}")
        total = sum(a.weight for a in arms)
        bounds = tuple(c / total for c in accumulate(a.weight for a in arms))
        return cls(name, tuple(arms), bounds)

    def pick(self, key: bytes) -> ArmSettings:
        i = bisect_right(self.bounds, bucket(self.name, key))
        return self.arms[min(i, len(self.arms) - 1)]


class Router:
    """Routes events (see the module docstring)."""

    def __init__(self, routing: RoutingSettings, default_model: str) -> None:
        self._default = default_model
        self._topics = dict(routing.topic_models)
        self._experiments = {n: _Experiment.build(n, arms) for n, arms in routing.experiments.items()}
        self._shadows = {m: tuple(ts) for m, ts in routing.shadows.items()}
        self._plain: dict[str, Route] = {}  # routes without an experiment, one per model name

    def default_for(self, topic: str) -> str:
        """The model for events of ``topic`` that name none."""
        return self._topics.get(topic, self._default)

    def route(self, topic: str, requested: str | None, key: bytes) -> Route:
        """The route of one event; ``key`` is its Kafka key (or its id when keyless)."""
        name = requested if requested is not None else self.default_for(topic)
        experiment = self._experiments.get(name)
        if experiment is None:
            route = self._plain.get(name)
            if route is None:
                route = Route(name)
                if len(self._plain) < 64:  # names come from events: keep the cache bounded
                    self._plain[name] = route
            return route
        arm = experiment.pick(key)
        return Route(arm.model, arm.version, arm.name)

    def shadows(self, model: str) -> tuple[RouteTarget, ...]:
        """Shadow targets of batches served by ``model``."""
        return self._shadows.get(model, ())

    @property
    def has_shadows(self) -> bool:
        """Whether any shadow is configured."""
        return any(self._shadows.values())

    def targets(self) -> set[str]:
        """Every model name routing can send an event or a shadow copy to."""
        names = {self._default, *self._topics.values()}
        names |= {a.model for e in self._experiments.values() for a in e.arms}
        names |= {t.model for ts in self._shadows.values() for t in ts}
        return names - set(self._experiments)

    def problems(self, served: Mapping[str, object]) -> list[str]:
        """Routing targets that ``served`` (model name -> spec) does not contain."""
        missing = sorted(self.targets() - set(served))
        return [f"routing names model {m!r}, which the inference backend does not serve" for m in missing]


def input_topics(settings: Settings) -> list[str]:
    """The topics a worker consumes: the events topic, then each routed topic."""
    extra = [t for t in settings.routing.topic_models if t != settings.topics.events]
    return [settings.topics.events, *extra]
