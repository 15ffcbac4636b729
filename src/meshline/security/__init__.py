"""Identity and access: per-mesh CAs and workload certificates (SPIFFE), tokens, API and
xDS authentication, and the agent's SDS server. See docs/security.md."""
