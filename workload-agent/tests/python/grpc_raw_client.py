"""A raw grpcio client (grpc-core, no py-spiffe): calls FetchX509SVID and prints the outcome as
one JSON line: {"code": "OK"|status name, "details": ..., "svids": n}.

Usage: grpc_raw_client.py SOCKET with-header|without-header
"""

import json
import sys

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc


def main():
    socket, mode = sys.argv[1], sys.argv[2]
    metadata = [("workload.spiffe.io", "true")] if mode == "with-header" else []
    with grpc.insecure_channel("unix://" + socket) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=metadata,
                                        timeout=20)
            first = next(stream)
            stream.cancel()
            result = {"code": "OK", "details": "", "svids": len(first.svids)}
        except grpc.RpcError as e:
            result = {"code": e.code().name, "details": e.details() or "", "svids": 0}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
