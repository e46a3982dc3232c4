"""A gRPC client from outside, on grpcio's own health and reflection
packages: what the system tests ask a node's public listener, printed as
JSON on standard output.

    grpc_probe.py check ADDR NAME...     {"NAME": "SERVING" | "NOT_SERVING" | "NOT_FOUND"}
    grpc_probe.py watch ADDR NAME        one status per line as they come,
                                         then END and the call's code when
                                         the server ends the stream (or 30 s)
    grpc_probe.py reflect ADDR v1|v1alpha SYMBOL
                                         {"services": [...], "files": [...],
                                          "methods": {...}} of SYMBOL's file
"""

import faulthandler
import json
import os
import sys

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2


def check(addr, names):
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        out = {}
        for name in names:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                out[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                out[name] = e.code().name
        print(json.dumps(out))


def watch(addr, name):
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=30)
        for reply in stream:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            print(status, flush=True)
        # The server ended the stream (a draining node does).
        print("END " + stream.code().name, flush=True)


def reflect(addr, version, symbol):
    # grpcio ships the v1alpha messages only; v1's are the same on the
    # wire, so the v1 service is called by its own path with them.
    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(addr) as channel:
        call = channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        ask = lambda request: list(call(iter([request]), timeout=10))[0]
        listed = ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        services = [s.name for s in listed.list_services_response.service]
        files, methods = [], {}
        try:
            found = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        except grpc.RpcError as e:
            # tonic says an unknown symbol with the call's status.
            found, files, methods = None, None, f"{e.code().name}: {e.details()}"
    if found is not None and found.HasField("error_response"):
        files, methods = None, found.error_response.error_message
    elif found is not None:
        for raw in found.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files.append(file.name)
            for service in file.service:
                methods[f"{file.package}.{service.name}"] = [m.name for m in service.method]
    print(json.dumps({"services": services, "files": files, "methods": methods}))


def main():
    # A probe that hangs says where (the test allows it 60 s).
    faulthandler.dump_traceback_later(45, exit=True)
    command, addr, *rest = sys.argv[1:]
    if command == "check":
        check(addr, rest)
    elif command == "watch":
        watch(addr, rest[0])
    elif command == "reflect":
        reflect(addr, rest[0], rest[1])
    else:
        sys.exit(f"unknown command {command}: check, watch or reflect")


if __name__ == "__main__":
    main()
    # Leave without grpcio's shutdown at exit, which can stall the process
    # after its work is done (a test run saw a probe hang 60 s once).
    sys.stdout.flush()
    os._exit(0)
