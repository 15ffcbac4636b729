"""The control plane's one API (REST + OpenAPI) and the client the CLI and agent use."""
