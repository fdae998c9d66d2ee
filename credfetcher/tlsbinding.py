"""RFC 5929 4 ``tls-server-end-point`` channel bindings, computed from the server certificate.

Pure code (no I/O): :mod:`credfetcher.ldapchannel` passes the DC's certificate (DER, from the
TLS socket) and puts the result in the GSSAPI channel bindings of its LDAPS bind. Samba 4.22, and
AD with LdapEnforceChannelBinding, refuse a bind without them (``80090346``,
SEC_E_BAD_BINDINGS). The hash is the certificate's signature hash (RFC 5929 4.1, MD5 and SHA-1
replaced by SHA-256), read with a minimal DER walker (X.690) so no X.509 library is needed.
"""

from __future__ import annotations

import hashlib

__all__ = ["tls_server_end_point"]

# Signature algorithm OID -> hash (RFC 5929 4.1: MD5 and SHA-1 are replaced by SHA-256).
_SIG_HASHES = {
    "1.2.840.113549.1.1.4": "sha256",  # md5WithRSAEncryption
    "1.2.840.113549.1.1.5": "sha256",  # sha1WithRSAEncryption
    "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.10045.4.1": "sha256",  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.1": "sha224",
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
    "1.2.840.10040.4.3": "sha256",  # dsa-with-sha1
    "2.16.840.1.101.3.4.3.2": "sha256",  # dsa-with-sha256
}
# Digest OIDs inside RSASSA-PSS parameters (RFC 4055 3.1).
_DIGESTS = {
    "1.3.14.3.2.26": "sha256",  # SHA-1 -> SHA-256 as above
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
}
_RSASSA_PSS = "1.2.840.113549.1.1.10"


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos`` (X.690 8.1): (tag, start of contents, end of contents)."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("DER item overruns its container")
    return tag, pos, pos + length


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _der_item(data, start)
        items.append(item)
        start = item[2]
    return items


def _oid(data: bytes) -> str:
    """Decode an OBJECT IDENTIFIER's contents (X.690 8.19)."""
    arcs: list[int] = []
    value = 0
    for byte in data:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise ValueError("empty OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _signature_hash(cert_der: bytes) -> str:
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... }
    _, start, end = _der_item(cert_der, 0)
    parts = _der_children(cert_der, start, end)
    _, alg_start, alg_end = parts[1]
    alg = _der_children(cert_der, alg_start, alg_end)
    oid = _oid(cert_der[alg[0][1] : alg[0][2]])
    if oid == _RSASSA_PSS:
        # RSASSA-PSS-params: hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1.
        if len(alg) > 1:
            for tag, p_start, _ in _der_children(cert_der, alg[1][1], alg[1][2]):
                if tag == 0xA0:
                    _, h_start, h_end = _der_item(cert_der, p_start)
                    inner = _der_children(cert_der, h_start, h_end)
                    return _DIGESTS.get(_oid(cert_der[inner[0][1] : inner[0][2]]), "sha256")
        return "sha256"
    # RFC 5929 leaves other algorithms (e.g. Ed25519) undefined; SHA-256 is what Windows uses.
    return _SIG_HASHES.get(oid, "sha256")


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 4 ``tls-server-end-point`` application data for the server certificate."""
    try:
        algorithm = _signature_hash(cert_der)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"cannot read the DC's certificate: {exc}") from exc
    return b"tls-server-end-point:" + hashlib.new(algorithm, cert_der).digest()
