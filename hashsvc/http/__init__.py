"""The HTTP/JSON API (`/v1`) and the web console (`/console`), in front of the gRPC services.

Every HTTP request becomes one call to this process's own gRPC server (`gateway.py`), over a
Unix socket only this process can open. Why not call the servicers directly: keys and roles,
admission, limits, metrics and the audit log then run exactly as they do for a gRPC client, and
the two APIs cannot drift; the price is one local hop (measured in README "Performance").
"""
