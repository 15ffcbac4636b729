"""The control-plane process assembled: the composition root above every other layer.

:mod:`.controlplane` wires store, reconciler, xDS server and REST API into a
:class:`~.controlplane.ControlPlane`; :mod:`.factory` is the one place that knows which
optional subsystems exist and installs them through :class:`meshline.extensions.Extensions`.
Nothing below this package imports it (checked by import-linter, see pyproject.toml).
"""
