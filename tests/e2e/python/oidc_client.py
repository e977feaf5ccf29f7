"""A relying party that knows only Lanyard's OIDC discovery URL (and the CA of its HTTPS
certificate): it reads the discovery document, takes `jwks_uri` from it and verifies a
JWT-SVID with PyJWT's PyJWKClient, as a service accepting OIDC ID tokens would.

    oidc_client.py DISCOVERY_URL CA_FILE validate AUDIENCE TOKEN
    oidc_client.py DISCOVERY_URL CA_FILE key KID

Prints one JSON line: {"step": "validated", ...} / {"step": "key_found", ...}, or
{"step": "refused", "kind": "key" | "token", "error": ...}. Exits non-zero only when the
discovery document itself is unusable.
"""

import json
import ssl
import sys
import urllib.request

import jwt
from jwt import PyJWKClient

SUFFIX = "/.well-known/openid-configuration"


def main():
    discovery_url, ca_file, mode = sys.argv[1:4]
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(discovery_url, context=context, timeout=10) as answer:
        assert answer.headers.get_content_type() == "application/json"
        config = json.load(answer)
    issuer = config["issuer"]
    # OIDC Discovery 1.0 section 4.3: the issuer is the discovery URL without the suffix.
    assert discovery_url == issuer + SUFFIX, (discovery_url, issuer)
    algorithms = config["id_token_signing_alg_values_supported"]
    client = PyJWKClient(config["jwks_uri"], cache_jwk_set=False, ssl_context=context, timeout=10)
    try:
        if mode == "key":
            key = client.get_signing_key(sys.argv[4])
            print(json.dumps({"step": "key_found", "kid": key.key_id, "alg": key.algorithm_name}))
            return
        audience, token = sys.argv[4:6]
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
        print(json.dumps({
            "step": "validated",
            "sub": claims["sub"],
            "iss": claims["iss"],
            "kid": key.key_id,
            "alg": key.algorithm_name,
        }))
    except jwt.exceptions.PyJWKClientError as e:
        print(json.dumps({"step": "refused", "kind": "key", "error": str(e)}))
    except jwt.exceptions.InvalidTokenError as e:
        print(json.dumps({"step": "refused", "kind": "token", "error": str(e)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
