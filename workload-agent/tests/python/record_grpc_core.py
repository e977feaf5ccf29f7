"""Records what a grpc-core client (Python grpcio) sends on a Unix socket, as test fixtures.

A minimal fake server answers the client's preface with an empty SETTINGS frame and a
SETTINGS ack, then records every octet the client sends until it has sent `calls` HEADERS
frames (one per RPC), and writes them (preface included) to OUT.

Usage: record_grpc_core.py OUT SOCKET_PATH_TO_USE
The socket path is what grpc-core percent-encodes into :authority, so a long one is chosen
by the caller. Several calls on one connection show the dynamic-table references.
"""

import socket
import struct
import sys
import threading

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

HEADERS = 0x1
CALLS = 3


def count_headers(data):
    count, pos = 0, 24
    while pos + 9 <= len(data):
        length = struct.unpack(">I", b"\0" + data[pos:pos + 3])[0]
        if data[pos + 3] == HEADERS:
            count += 1
        pos += 9 + length
    return count, pos == len(data)


def serve(listener, out_path, done):
    conn, _ = listener.accept()
    conn.settimeout(20)
    data = b""
    answered = False
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if not answered and len(data) >= 24:
            conn.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]) + bytes([0, 0, 0, 4, 1, 0, 0, 0, 0]))
            answered = True
        count, whole = count_headers(data)
        if count >= CALLS and whole:
            break
    with open(out_path, "wb") as f:
        f.write(data)
    conn.close()
    done.set()


def main():
    out_path, sock_path = sys.argv[1], sys.argv[2]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    done = threading.Event()
    threading.Thread(target=serve, args=(listener, out_path, done), daemon=True).start()
    channel = grpc.insecure_channel("unix://" + sock_path)
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    md = [("workload.spiffe.io", "true")]
    calls = [
        stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=md, timeout=5),
        stub.FetchJWTSVID.future(workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=md,
                                 timeout=5),
        stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=md, timeout=5),
    ]
    assert done.wait(20), "the client did not send its calls"
    for call in calls:
        call.cancel()
    channel.close()


if __name__ == "__main__":
    main()
