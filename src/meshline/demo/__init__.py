"""The `meshline up` demo: web -> orders (v1, v2) -> inventory, each behind its sidecar."""
