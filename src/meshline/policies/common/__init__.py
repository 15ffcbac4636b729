"""What several policy kinds share, so that no policy package imports another.

* :mod:`.fields` schema field types and destination rules of the resilience policies;
* :mod:`.sections` configurer helpers over a section's routes and clusters;
* :mod:`.outlier` outlier detection (CircuitBreaker's, and HealthCheck's passive check);
* :mod:`.backends` route backends (HTTPRoute, TCPRoute);
* :mod:`.callers` per-caller rules of the inbound policies (FaultInjection, RateLimit).

This package is not a policy kind; ``pyproject.toml`` keeps the kinds independent of each
other (import-linter), and this package independent of every kind.
"""
