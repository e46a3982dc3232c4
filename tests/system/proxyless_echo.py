"""A proxyless gRPC client: grpcio resolves xds:///echo through flotilla's
xDS server (GRPC_XDS_BOOTSTRAP) and calls flotilla.echo.v1.Echo/Echo.

Usage: proxyless_echo.py CALLS. Prints one JSON object: how many replies
each node gave. The messages are encoded by hand (field 1 = message;
reply field 2 = node) so that no generated stubs are needed.
"""
import json
import sys

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


def main() -> None:
    calls = int(sys.argv[1])
    with grpc.insecure_channel("xds:///echo") as channel:
        echo = channel.unary_unary(
            "/flotilla.echo.v1.Echo/Echo",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        nodes = {}
        for i in range(calls):
            reply = fields(echo(encode(f"call-{i}"), timeout=20, wait_for_ready=True))
            nodes[reply.get(2, "")] = nodes.get(reply.get(2, ""), 0) + 1
    print(json.dumps(nodes))


if __name__ == "__main__":
    main()
