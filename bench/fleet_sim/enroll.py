"""Enrollment through the real endpoint, with an identity cache on disk.

Each missing device gets a one-use bootstrap token from the REST API (`POST /bootstrap-tokens`),
a fresh P-256 key and CSR, and a certificate from `DeviceService/Enroll` on the enrollment port
(server-authenticated TLS), as an agent does. Identities are kept under
`identities/<ca fingerprint>/<device id>/` (key.pem, cert.pem) next to `ca.pem` and `meta.json`
(the announced sync endpoint), so runs against the same server data dir reuse them: enrolling
10,000 devices takes minutes, loading them takes a second. A different server (another CA) gets
its own folder.

Owns identities; does not open Sync sessions (device.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.fleet_sim.config import SimConfig
from bench.fleet_sim.link import SimIdentity
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)


def device_ids(cfg: SimConfig) -> list[str]:
    return [f"{cfg.id_prefix}-{i:05d}" for i in range(cfg.devices)]


def ca_fingerprint(ca_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(ca_pem)
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def resolve_ca(cfg: SimConfig) -> bytes:
    if cfg.ca is not None:
        return cfg.ca.read_bytes()
    cached = sorted(cfg.identities.glob("*/ca.pem")) if cfg.identities.is_dir() else []
    if len(cached) == 1:
        return cached[0].read_bytes()
    raise SystemExit("--ca is required (the server's data dir/pki/ca.pem)")


class IdentityCache:
    def __init__(self, root: Path, ca_pem: bytes) -> None:
        self.dir = root / ca_fingerprint(ca_pem)
        self.ca_pem = ca_pem
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "ca.pem").write_bytes(ca_pem)

    @property
    def sync_endpoint(self) -> str:
        try:
            return str(json.loads((self.dir / "meta.json").read_text())["sync_endpoint"])
        except (OSError, ValueError, KeyError):
            return ""

    def remember_endpoint(self, endpoint: str) -> None:
        if endpoint and endpoint != self.sync_endpoint:
            (self.dir / "meta.json").write_text(json.dumps({"sync_endpoint": endpoint}))

    def load(self, device_id: str) -> SimIdentity | None:
        d = self.dir / device_id
        try:
            return SimIdentity(
                device_id, (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes(), self.ca_pem
            )
        except OSError:
            return None

    def save(self, ident: SimIdentity) -> None:
        d = self.dir / ident.device_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "key.pem").write_bytes(ident.key_pem)
        os.chmod(d / "key.pem", 0o600)
        tmp = d / "cert.pem.tmp"
        tmp.write_bytes(ident.cert_pem)
        tmp.replace(d / "cert.pem")  # written last: marks the identity complete


def _key_and_csr(device_id: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


async def _enroll_missing(
    cfg: SimConfig, cache: IdentityCache, missing: Sequence[str], progress: Callable[[int], None]
) -> list[SimIdentity]:
    target = cfg.resolved_enroll_target()
    opts = [("grpc.ssl_target_name_override", cfg.server_name)] if cfg.server_name else []
    channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(cache.ca_pem), options=opts)
    enroll = channel.unary_unary(
        "/edgeloop.v1.DeviceService/Enroll",
        request_serializer=pb.EnrollRequest.SerializeToString,
        response_deserializer=pb.EnrollResponse.FromString,
    )
    sem = asyncio.Semaphore(cfg.enroll_concurrency)
    out: list[SimIdentity] = []
    headers = {"Authorization": f"Bearer {cfg.token}"}
    async with httpx.AsyncClient(
        base_url=cfg.server.rstrip("/") + "/api/v1", headers=headers, timeout=60
    ) as api:

        async def one(device_id: str) -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        resp = await api.post("/bootstrap-tokens", json={"labels": {"sim": cfg.id_prefix}})
                        resp.raise_for_status()
                        token = resp.json()["token"]
                        key_pem, csr_pem = _key_and_csr(device_id)
                        er = await enroll(
                            pb.EnrollRequest(bootstrap_token=token, csr_pem=csr_pem, device_id=device_id,
                                             profile="generic-x86", agent_version="fleet-sim"),
                            timeout=60,
                        )  # fmt: skip
                        break
                    except (httpx.TransportError, grpc.aio.AioRpcError) as err:
                        if isinstance(err, grpc.aio.AioRpcError) and err.code() in (
                            grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
                            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                        ):  # fmt: skip
                            raise RuntimeError(f"enrollment of {device_id} refused: {err.details()}") from err
                        logger.warning("enroll %s attempt %d: %s", device_id, attempt + 1, err)
                        await asyncio.sleep(1 + attempt)
                else:
                    raise RuntimeError(f"enrollment of {device_id} failed 5 times")
                ident = SimIdentity(device_id, key_pem, er.certificate_chain_pem, cache.ca_pem)
                cache.save(ident)
                cache.remember_endpoint(er.sync_endpoint)
                out.append(ident)
                progress(1)

        try:
            await asyncio.gather(*(one(d) for d in missing))
        finally:
            await channel.close()
    return out


def ensure_identities(
    cfg: SimConfig, progress: Callable[[int], None] = lambda n: None
) -> tuple[list[SimIdentity], str]:
    """Every configured device's identity (enrolling those not cached) and the sync endpoint."""
    ca_pem = resolve_ca(cfg)
    cache = IdentityCache(cfg.identities, ca_pem)
    ids = device_ids(cfg)
    have = {d: cache.load(d) for d in ids}
    missing = [d for d, ident in have.items() if ident is None]
    if missing:
        t0 = time.monotonic()
        logger.warning("enrolling %d devices (%d cached) via %s", len(missing), len(ids) - len(missing),
                       cfg.resolved_enroll_target())  # fmt: skip
        for ident in asyncio.run(_enroll_missing(cfg, cache, missing, progress)):
            have[ident.device_id] = ident
        logger.warning("enrolled %d devices in %.1fs", len(missing), time.monotonic() - t0)
    idents = [have[d] for d in ids]
    assert all(i is not None for i in idents)
    return idents, cache.sync_endpoint  # type: ignore[return-value]


def ca_digest(ca_pem: bytes) -> str:
    return hashlib.sha256(ca_pem).hexdigest()
