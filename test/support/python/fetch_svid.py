#!/usr/bin/python3
"""A SPIFFE Workload API client that Sigil did not write: Python grpcio (gRPC C-core) plus
google.protobuf, as Debian packages them (python3-grpcio, python3-protobuf). Run it with
/usr/bin/python3: a pyenv/venv python on PATH usually lacks these modules.

The message types are declared here from the SPIFFE Workload API standard (field names and
numbers of its workloadapi.proto), independently of Sigil's proto/workload.proto, so a wrong
field number on either side shows up as a failure.

Usage: fetch_svid.py --socket PATH [--method x509|jwt|bundles] [--audience A ...]
                     [--out DIR] [--no-header]
Prints one JSON object. With --out (x509): DIR/svid.pem (leaf), DIR/chain.pem (intermediates),
DIR/bundle.pem, DIR/key.pem.
"""
import argparse
import base64
import json
import os
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def _msg(fdp, name, fields):
    m = fdp.message_type.add()
    m.name = name
    for fname, number, ftype, label, type_name in fields:
        f = m.field.add()
        f.name = fname
        f.number = number
        f.type = ftype
        f.label = label
        if type_name:
            f.type_name = type_name
    return m


def _map_entry(parent, entry_name, value_type):
    e = parent.nested_type.add()
    e.name = entry_name
    e.options.map_entry = True
    k = e.field.add()
    k.name, k.number, k.type, k.label = "key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL
    v = e.field.add()
    v.name, v.number, v.type, v.label = "value", 2, value_type, F.LABEL_OPTIONAL
    return v


def build_messages():
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.name = "spiffe_workloadapi_py_test.proto"
    fdp.syntax = "proto3"
    OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    _msg(fdp, "X509SVIDRequest", [])
    _msg(fdp, "X509SVID", [
        ("spiffe_id", 1, F.TYPE_STRING, OPT, None),
        ("x509_svid", 2, F.TYPE_BYTES, OPT, None),
        ("x509_svid_key", 3, F.TYPE_BYTES, OPT, None),
        ("bundle", 4, F.TYPE_BYTES, OPT, None),
        ("hint", 5, F.TYPE_STRING, OPT, None),
    ])
    resp = _msg(fdp, "X509SVIDResponse", [
        ("svids", 1, F.TYPE_MESSAGE, REP, ".X509SVID"),
        ("crl", 2, F.TYPE_BYTES, REP, None),
        ("federated_bundles", 3, F.TYPE_MESSAGE, REP, ".X509SVIDResponse.FederatedBundlesEntry"),
    ])
    _map_entry(resp, "FederatedBundlesEntry", F.TYPE_BYTES)
    _msg(fdp, "X509BundlesRequest", [])
    bresp = _msg(fdp, "X509BundlesResponse", [
        ("crl", 1, F.TYPE_BYTES, REP, None),
        ("bundles", 2, F.TYPE_MESSAGE, REP, ".X509BundlesResponse.BundlesEntry"),
    ])
    _map_entry(bresp, "BundlesEntry", F.TYPE_BYTES)
    _msg(fdp, "JWTSVIDRequest", [
        ("audience", 1, F.TYPE_STRING, REP, None),
        ("spiffe_id", 2, F.TYPE_STRING, OPT, None),
    ])
    _msg(fdp, "JWTSVID", [
        ("spiffe_id", 1, F.TYPE_STRING, OPT, None),
        ("svid", 2, F.TYPE_STRING, OPT, None),
        ("hint", 3, F.TYPE_STRING, OPT, None),
    ])
    _msg(fdp, "JWTSVIDResponse", [("svids", 1, F.TYPE_MESSAGE, REP, ".JWTSVID")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    out = {}
    for name in ["X509SVIDRequest", "X509SVIDResponse", "X509BundlesRequest", "X509BundlesResponse",
                 "JWTSVIDRequest", "JWTSVIDResponse"]:
        desc = pool.FindMessageTypeByName(name)
        get_cls = getattr(message_factory, "GetMessageClass", None)
        out[name] = get_cls(desc) if get_cls else message_factory.MessageFactory(pool).GetPrototype(desc)
    return out


def split_der(buf):
    """Split concatenated DER certificates."""
    out, off = [], 0
    while off < len(buf):
        if buf[off] != 0x30 or off + 2 > len(buf):
            raise ValueError("not concatenated DER")
        first = buf[off + 1]
        if first < 0x80:
            length, hdr = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4:
                raise ValueError("bad DER length")
            length = int.from_bytes(buf[off + 2:off + 2 + n], "big")
            hdr = 2 + n
        if off + hdr + length > len(buf):
            raise ValueError("truncated DER")
        out.append(bytes(buf[off:off + hdr + length]))
        off += hdr + length
    return out


def pem(der, label):
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--method", default="x509", choices=["x509", "jwt", "bundles"])
    ap.add_argument("--audience", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--no-header", action="store_true")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    msgs = build_messages()
    metadata = [] if args.no_header else [("workload.spiffe.io", "true")]
    result = {"ok": True, "uid": os.getuid(), "pid": os.getpid()}
    with grpc.insecure_channel("unix:" + args.socket) as channel:
        try:
            if args.method == "x509":
                call = channel.unary_stream(
                    "/SpiffeWorkloadAPI/FetchX509SVID",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=msgs["X509SVIDResponse"].FromString,
                )
                stream = call(msgs["X509SVIDRequest"](), metadata=metadata, timeout=args.timeout)
                resp = next(stream)
                stream.cancel()
                svids = []
                for s in resp.svids:
                    chain = split_der(s.x509_svid)
                    svids.append({"spiffe_id": s.spiffe_id, "hint": s.hint, "chain_len": len(chain),
                                  "bundle_len": len(split_der(s.bundle)), "key_len": len(s.x509_svid_key)})
                result["svids"] = svids
                result["federated"] = sorted(resp.federated_bundles.keys())
                if args.out and resp.svids:
                    first = resp.svids[0]
                    chain = split_der(first.x509_svid)
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, "svid.pem"), "w") as f:
                        f.write(pem(chain[0], "CERTIFICATE"))
                    with open(os.path.join(args.out, "chain.pem"), "w") as f:
                        f.write("".join(pem(c, "CERTIFICATE") for c in chain[1:]))
                    with open(os.path.join(args.out, "bundle.pem"), "w") as f:
                        f.write("".join(pem(c, "CERTIFICATE") for c in split_der(first.bundle)))
                    fd = os.open(os.path.join(args.out, "key.pem"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(pem(first.x509_svid_key, "PRIVATE KEY"))
            elif args.method == "bundles":
                call = channel.unary_stream(
                    "/SpiffeWorkloadAPI/FetchX509Bundles",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=msgs["X509BundlesResponse"].FromString,
                )
                stream = call(msgs["X509BundlesRequest"](), metadata=metadata, timeout=args.timeout)
                resp = next(stream)
                stream.cancel()
                result["bundles"] = {k: len(split_der(v)) for k, v in resp.bundles.items()}
            else:
                call = channel.unary_unary(
                    "/SpiffeWorkloadAPI/FetchJWTSVID",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=msgs["JWTSVIDResponse"].FromString,
                )
                req = msgs["JWTSVIDRequest"](audience=args.audience)
                resp = call(req, metadata=metadata, timeout=args.timeout)
                result["svids"] = [{"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint} for s in resp.svids]
        except grpc.RpcError as e:
            result = {"ok": False, "code": e.code().name, "details": e.details(), "uid": os.getuid()}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
