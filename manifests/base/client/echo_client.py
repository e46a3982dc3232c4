"""A gRPC client of flotilla.echo.v1.Echo/Echo. By default proxyless:
grpcio resolves xds:///echo through flotilla's xDS server
(GRPC_XDS_BOOTSTRAP) and spreads the calls over the echo pods with no Envoy
in the path. With --target 127.0.0.1:15001 it calls through the pod's Envoy
sidecar instead (manifests/overlays/sidecars). With --tls-ca CA_FILE it
calls over TLS, checking the server's certificate against CA_FILE (and the
name --tls-name, when the target's host is not the certificate's name).

Usage: echo_client.py [--target T] [--tls-ca F [--tls-name N]] [SECONDS] [INTERVAL]. Calls every
INTERVAL seconds (default 0.05) for SECONDS (default: until stopped) and
prints, once a second, one JSON line: the calls each echo pod answered in
that second and the calls that failed.
Or: echo_client.py [--target T] --calls N. Makes N calls in a row and prints
one JSON object: how many each node answered (the system tests use it).
The messages are encoded by hand (field 1 = message; reply field 2 = node),
so no generated stubs are needed.
"""
import argparse
import json
import sys
import time

import grpc


def encode(message: str) -> bytes:
    data = message.encode()
    return b"\x0a" + bytes([len(data)]) + data


def fields(data: bytes) -> dict:
    out, i = {}, 0
    while i < len(data):
        key = data[i]
        i += 1
        length, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out[key >> 3] = data[i:i + length].decode()
        i += length
    return out


def echo_method(channel):
    return channel.unary_unary(
        "/flotilla.echo.v1.Echo/Echo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


def channel_to(args) -> grpc.Channel:
    if args.tls_ca is None:
        return grpc.insecure_channel(args.target)
    with open(args.tls_ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [("grpc.ssl_target_name_override", args.tls_name)] if args.tls_name else []
    return grpc.secure_channel(args.target, credentials, options=options)


def count(args, calls: int) -> None:
    with channel_to(args) as channel:
        echo = echo_method(channel)
        nodes = {}
        for i in range(calls):
            reply = fields(echo(encode(f"call-{i}"), timeout=20, wait_for_ready=True))
            nodes[reply.get(2, "")] = nodes.get(reply.get(2, ""), 0) + 1
    print(json.dumps(nodes))


def main() -> None:
    parser = argparse.ArgumentParser(description="Calls flotilla's echo service.")
    parser.add_argument("--target", default="xds:///echo")
    parser.add_argument("--calls", type=int)
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-name")
    parser.add_argument("seconds", nargs="?", type=float, default=float("inf"))
    parser.add_argument("interval", nargs="?", type=float, default=0.05)
    args = parser.parse_args()
    if args.calls is not None:
        count(args, args.calls)
        return
    seconds, interval = args.seconds, args.interval
    start = time.monotonic()
    with channel_to(args) as channel:
        echo = echo_method(channel)
        window, second, failed, i = {}, int(start), 0, 0
        while time.monotonic() - start < seconds:
            i += 1
            try:
                reply = fields(echo(encode(f"call-{i}"), timeout=5, wait_for_ready=True))
                node = reply.get(2, "")
                window[node] = window.get(node, 0) + 1
            except grpc.RpcError as e:
                failed += 1
                print(json.dumps({"error": str(e.code())}), file=sys.stderr, flush=True)
            now = time.monotonic()
            if int(now) != second:
                print(json.dumps({"t": round(now - start, 1), "nodes": window, "failed": failed}), flush=True)
                window, second = {}, int(now)
            time.sleep(interval)
        print(json.dumps({"t": round(time.monotonic() - start, 1), "nodes": window, "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
