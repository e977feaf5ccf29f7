"""py-spiffe against a Workload API socket, exactly as a workload would use it (no patched
options). Prints one JSON object per line on stdout; the Rust tests read and check them.

Usage: py_spiffe_client.py SOCKET fetch AUDIENCE
       py_spiffe_client.py SOCKET watch UPDATES   (prints each X.509 context, exits after UPDATES)
"""

import json
import sys
import threading

from spiffe import JwtSvid, WorkloadApiClient


def emit(**fields):
    print(json.dumps(fields), flush=True)


def leaf_serial(svid):
    return format(svid.leaf.serial_number, "x")


def fetch(client, audience):
    svid = client.fetch_x509_svid(timeout=20)
    emit(step="x509_svid", spiffe_id=str(svid.spiffe_id), chain=len(svid.cert_chain),
         serial=leaf_serial(svid))
    bundles = client.fetch_x509_bundles(timeout=20)
    emit(step="x509_bundles",
         trust_domains=sorted(str(b.trust_domain) for b in bundles.bundles),
         authorities=sum(len(b.x509_authorities) for b in bundles.bundles))
    jwt = client.fetch_jwt_svid(audience={audience}, timeout=20)
    emit(step="jwt_svid", spiffe_id=str(jwt.spiffe_id), audience=sorted(jwt.audience))
    validated = client.validate_jwt_svid(jwt.token, audience, timeout=20)
    emit(step="validate_jwt_svid", spiffe_id=str(validated.spiffe_id))
    jwt_bundles = client.fetch_jwt_bundles(timeout=20)
    own = jwt_bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain)
    local = JwtSvid.parse_and_validate(jwt.token, own, {audience})
    emit(step="jwt_local_validation", spiffe_id=str(local.spiffe_id),
         jwt_trust_domains=sorted(str(b.trust_domain) for b in jwt_bundles.bundles))


def watch(client, updates):
    seen = []
    done = threading.Event()
    failure = []

    def on_success(context):
        svid = context.default_svid
        seen.append(leaf_serial(svid))
        emit(step="x509_context", spiffe_id=str(svid.spiffe_id), serial=leaf_serial(svid))
        if len(seen) >= updates:
            done.set()

    def on_error(error):
        failure.append(repr(error))
        done.set()

    handler = client.stream_x509_contexts(on_success=on_success, on_error=on_error)
    finished = done.wait(timeout=60)
    handler.cancel()
    if failure or not finished:
        emit(step="watch_failed", error=failure[0] if failure else "timed out")
        sys.exit(1)


def main():
    socket, command, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    with WorkloadApiClient(socket_path="unix://" + socket) as client:
        if command == "fetch":
            fetch(client, arg)
        elif command == "watch":
            watch(client, int(arg))
        else:
            sys.exit("unknown command " + command)
    emit(step="done")


if __name__ == "__main__":
    main()
