"""A proxyless gRPC client: grpcio resolves xds:///echo through flotilla's
xDS server (GRPC_XDS_BOOTSTRAP) and calls flotilla.echo.v1.Echo/Echo with
no Envoy in the path, spreading the calls over the echo pods.

Usage: echo_client.py [SECONDS] [INTERVAL]. Calls every INTERVAL seconds
(default 0.05) for SECONDS (default: until stopped) and prints, once a
second, one JSON line: the calls each echo pod answered in that second and
the calls that failed.
Or: echo_client.py --calls N. Makes N calls in a row and prints one JSON
object: how many each node answered (the system tests use it). The messages are encoded by hand (field 1 = message;
reply field 2 = node), so no generated stubs are needed.
"""
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


def count(calls: int) -> None:
    with grpc.insecure_channel("xds:///echo") as channel:
        echo = echo_method(channel)
        nodes = {}
        for i in range(calls):
            reply = fields(echo(encode(f"call-{i}"), timeout=20, wait_for_ready=True))
            nodes[reply.get(2, "")] = nodes.get(reply.get(2, ""), 0) + 1
    print(json.dumps(nodes))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--calls":
        count(int(sys.argv[2]))
        return
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    start = time.monotonic()
    with grpc.insecure_channel("xds:///echo") as channel:
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
